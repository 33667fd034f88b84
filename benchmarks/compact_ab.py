"""Interleaved A/B of HyperGrid training settings in one process: ms per training step.

Each variant (runner settings as KEY=VALUE,... ; "" = the defaults) is built as ``gfnem train
hypergrid`` builds it, compiled once (a ``loop.make_chunk`` of --chunk steps), then the variants'
chunks are timed in turn, --rounds times, so that machine load hits them alike; the table gives
each variant's median ms/step and its ratio to the first. The policy starts untrained (short
trajectories: the most padding), the race's network (2 hidden layers of 256, R0 = 0.1).

    python benchmarks/compact_ab.py --ndim 4 --batch 1024 --chunk 4 "one_pass=1,compact=0" "one_pass=1"
    python benchmarks/compact_ab.py --ndim 2 --batch 64 --chunk 50 "compact=0" ""
    python benchmarks/compact_ab.py --ndim 2 --batch 256 --chunk 20 "min_block=1" "min_block=512"

``min_block=K`` sets ``sampling.MIN_EVAL_BLOCK`` (the training pass's smallest block) for that
variant's compilation.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def parse_variant(v: str) -> dict:
    out = {}
    for kv in filter(None, v.split(",")):
        k, val = kv.split("=")
        out[k] = bool(int(val)) if k in ("one_pass", "compact", "shared_torso") else int(val)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help='settings per variant, e.g. "compact=0" ""')
    p.add_argument("--ndim", type=int, default=4)
    p.add_argument("--height", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=5, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default=None, help="JSON path for the table")
    args = p.parse_args(argv)
    import jax

    from gfnem_jax import loop, sampling
    from gfnem_jax.experiments import runner

    default_block = sampling.MIN_EVAL_BLOCK

    chunks = []
    for v in args.variants:
        cfg = dict(task="hypergrid", env=dict(ndim=args.ndim, height=args.height, r0=0.1,
                                              r1=0.5, r2=2.0),
                   loss="tb", steps=100, batch_size=args.batch, lr=1e-3, lr_logz=0.1,
                   hidden=256, n_layers=2, seed=0, log_every=50, **parse_variant(v))
        sampling.MIN_EVAL_BLOCK = cfg.pop("min_block", default_block)  # read when compiled
        env, gfn, optim = runner.build(cfg)
        st, tx = runner.init_state(gfn, optim, 0)
        ch = loop.make_chunk(runner.make_step(gfn, tx, args.batch), args.chunk)
        out = jax.block_until_ready(ch(st))
        sampling.MIN_EVAL_BLOCK = default_block
        chunks.append([ch, out[0]])
        print(f"# compiled {v or 'defaults'}", flush=True)
    ms = [[] for _ in chunks]
    for _ in range(args.rounds):
        for i, c in enumerate(chunks):
            t = time.perf_counter()
            out = jax.block_until_ready(c[0](c[1]))
            ms[i].append((time.perf_counter() - t) / args.chunk * 1e3)
            c[1] = out[0]
    med = [float(np.median(m)) for m in ms]
    rows = [dict(variant=v or "defaults", median_ms=round(m, 3), ratio_to_first=round(med[0] / m, 3),
                 ms=[round(x, 3) for x in t]) for v, m, t in zip(args.variants, med, ms)]
    print(f"\n{args.ndim}-D H {args.height}, batch {args.batch}\n| variant | median ms/step | "
          f"speed-up over the first |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_ms']:.2f} | {r['ratio_to_first']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(ndim=args.ndim, height=args.height, batch=args.batch, rows=rows), f,
                      indent=1)
    return rows


if __name__ == "__main__":
    main()
