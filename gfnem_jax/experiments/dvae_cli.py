"""CLI glue for the discrete VAE (the lead wires these into ``gfnem_jax.cli``):

  gfnem train dvae --method gflownet|greedy|factorized|vqvae --codes K --data digits|PATH
                   --steps N --batch-size 128 --seed 0 [--devices N] --out DIR
                                  (--devices: data parallelism over N devices of all processes;
                                  several processes once gfnem_jax.cli lists dvae in
                                  MULTI_PROCESS)
                                  add_train_args(parser) / train_main(args) -> int
  gfnem eval dvae --run DIR --is-samples S
                                  add_eval_args(parser)  / eval_main(args)  -> int
                                  (prints one JSON line; writes DIR/eval.json)

Library errors are ValueErrors naming settings; callers turn them into flag names with
``gfnem_jax.config.flag_message(msg, [DVAESettings])`` and exit 2.
"""
from __future__ import annotations

import json

from gfnem_jax.config import add_arguments, from_args
from gfnem_jax.experiments.dvae import HELP, DVAESettings, evaluate_run, run

__all__ = ["HELP", "DVAESettings", "add_train_args", "train_main", "add_eval_args", "eval_main"]


def add_train_args(parser) -> None:
    add_arguments(parser, DVAESettings, group="discrete VAE")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def train_main(args) -> int:
    s = from_args(DVAESettings, args)
    res = run(s, args.out, progress=not getattr(args, "quiet", False),
              resume=getattr(args, "resume", False))
    print(json.dumps(res["final"]))
    return 0


def add_eval_args(parser) -> None:
    parser.add_argument("--run", required=True, help="a dvae run directory")
    parser.add_argument("--is-samples", dest="is_samples", type=int, default=5000,
                        help="importance samples per test image (default 5000)")
    parser.add_argument("--rows", type=int, default=8192,
                        help="(image, sample) pairs per compiled call: the memory budget (default 8192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default 0)")


def eval_main(args) -> int:
    res = evaluate_run(args.run, args.is_samples, rows=args.rows, seed=args.seed)
    print(json.dumps(res))
    return 0
