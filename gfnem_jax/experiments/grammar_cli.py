"""CLI glue for the grammar commands (the lead wires these into ``gfnem_jax.cli``):

  gfnem train grammar ...        add_train_args(parser)  / train_main(args)  -> int
  gfnem parse ...                add_parse_args(parser)  / parse_main(args)  -> int
  gfnem export-grammar ...       add_export_args(parser) / export_main(args) -> int

Library errors are ValueErrors naming settings; callers turn them into flag names with
``gfnem_jax.config.flag_message(msg, [GrammarSettings])`` and exit 2.
"""
from __future__ import annotations

import json
import sys

from gfnem_jax.config import add_arguments, from_args
from gfnem_jax.experiments.grammar import GrammarSettings, export_grammar, parse, run


def add_train_args(parser) -> None:
    add_arguments(parser, GrammarSettings)
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def train_main(args) -> int:
    s = from_args(GrammarSettings, args)
    summary = run(s, args.out, progress=not getattr(args, "quiet", False),
                  resume=getattr(args, "resume", False))
    print(json.dumps(summary["final"]))
    return 0


def add_parse_args(parser) -> None:
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a grammar run directory (learned grammar; unknown words -> <unk>)")
    g.add_argument("--grammar", help="a .npz grammar file (unknown words are an error)")
    parser.add_argument("--corpus", required=True, help="text file, one sentence per line")
    parser.add_argument("--out", required=True, help="output JSON lines {logprob, spans}")
    parser.add_argument("--decoder", default="viterbi",
                        help="viterbi (most likely tree), sample (a posterior sample: exact for a CFG, "
                             "the GFlowNet's for a gflownet run), greedy or best-of-K (e.g. best-of-8; "
                             "GFlowNet runs) (default viterbi)")
    parser.add_argument("--max-len", dest="max_len", type=int, default=20,
                        help="longest sentence parsed with --grammar (a run uses its own; default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")


def _named_run(fn):
    """ValueErrors about the run directory name the --run flag."""
    try:
        return fn()
    except ValueError as e:
        msg = str(e)
        raise ValueError("--" + msg if msg.startswith("run ") else msg) from None


def parse_main(args) -> int:
    counts = _named_run(lambda: parse(args.corpus, args.out, run=args.run, grammar=args.grammar, decoder=args.decoder,
                   max_len=args.max_len, seed=args.seed))
    if counts["skipped"]:
        print(f"skipped {counts['skipped']} sentences outside the length range 2..max-len",
              file=sys.stderr)
    print(f"parsed {counts['parsed']} sentences -> {args.out}", file=sys.stderr)
    return 0


def add_export_args(parser) -> None:
    parser.add_argument("--run", required=True, help="a grammar run directory (CFG)")
    parser.add_argument("--out", required=True, help="the .npz grammar file to write")


def export_main(args) -> int:
    _named_run(lambda: export_grammar(args.run, args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
