"""Several seeds in one call: ``jax.vmap`` over ``runner.make_train(cfg)`` (a whole run compiled as
one function) against the same seeds run one after another.

Reports compile time and run time of each way, and checks that every seed's final parameters and
final exact L1 match its sequential run (max abs difference printed; vmap changes no maths, only
how XLA batches the same operations). Prints a table and writes JSON.

    python benchmarks/seeds_vmap.py                   # 8 seeds, 2D H=8, TB, 1000 steps, batch 16
    python benchmarks/seeds_vmap.py --quick           # 4 seeds, 200 steps
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.experiments import runner


def _flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ndim", type=int, default=2)
    p.add_argument("--height", type=int, default=8)
    p.add_argument("--loss", default="tb")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench_out/seeds_vmap.json")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.steps = 4, 200
    cfg = dict(task="hypergrid", env=dict(ndim=a.ndim, height=a.height, r0=1e-3), loss=a.loss,
               steps=a.steps, batch_size=a.batch_size, hidden=256, n_layers=2)
    train = runner.make_train(cfg)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(a.seeds)])

    t0 = time.perf_counter()
    vm = jax.jit(jax.vmap(train)).lower(keys).compile()
    vm_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    st_v, _, l1_v = jax.block_until_ready(vm(keys))
    vm_run = time.perf_counter() - t0

    t0 = time.perf_counter()
    one = jax.jit(train).lower(keys[0]).compile()
    seq_compile = time.perf_counter() - t0
    seq = []
    t0 = time.perf_counter()
    for s in range(a.seeds):
        seq.append(jax.block_until_ready(one(keys[s])))
    seq_run = time.perf_counter() - t0

    rows, worst = [], 0.0
    for s in range(a.seeds):
        pv = _flat(jax.tree.map(lambda x: x[s], st_v.sampler))
        ps = _flat(seq[s][0].sampler)
        diff = float(np.max(np.abs(pv - ps)))
        worst = max(worst, diff)
        rows.append(dict(seed=s, l1_vmap=float(l1_v[s]), l1_sequential=float(seq[s][2]),
                         max_param_diff=diff, bitwise=bool(pv.tobytes() == ps.tobytes())))
    print(f"# {a.seeds} seeds of hypergrid {a.ndim}D H={a.height} {a.loss}, {a.steps} steps, "
          f"batch {a.batch_size}, on {jax.devices()[0].platform}")
    print("| way | compile s | run s | s per seed |\n|---|---:|---:|---:|")
    print(f"| vmap (one call) | {vm_compile:.2f} | {vm_run:.2f} | {vm_run / a.seeds:.3f} |")
    print(f"| sequential | {seq_compile:.2f} | {seq_run:.2f} | {seq_run / a.seeds:.3f} |")
    print("\n| seed | exact L1 (vmap) | exact L1 (sequential) | max |param diff| | bitwise |\n|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['l1_vmap']:.4f} | {r['l1_sequential']:.4f} | "
              f"{r['max_param_diff']:.2e} | {r['bitwise']} |")
    out = dict(config=cfg, seeds=a.seeds, vmap_compile_s=vm_compile, vmap_run_s=vm_run,
               sequential_compile_s=seq_compile, sequential_run_s=seq_run,
               speedup=seq_run / vm_run, max_param_diff=worst, rows=rows,
               device=str(jax.devices()[0]))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nspeedup {seq_run / vm_run:.2f}x; wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
