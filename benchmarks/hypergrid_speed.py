"""HyperGrid training speed: steps/s, trajectories/s, compile time and achieved GFLOP/s.

For every (ndim, height, batch size) it builds the same update the CLI trains with (TB, by default
torchgfn's default hypergrid network: separate P_F / P_B MLPs of 3 layers x 256 counting the input
projection, i.e. ``--n-layers 3``; ``--shared-torso`` gives gfnx's one shared network),
times the XLA compilation of a chunk of updates separately, then times steady-state chunks.

FLOPs are counted for every network pass actually executed: the rollout evaluates the forward
policy (P_F torso and head only) at all B * (T+1) states (padded steps included: static shapes),
the loss re-evaluates every head at them in one batched pass, and its backward pass costs twice
a forward pass: B * (T+1) * (flops(P_F only) + 3 * flops(policy)).
The matmul peak is measured by this script on this machine (float32, square 2048 and the policy's
own layer shape). Writes a markdown table to stdout and JSON to --out.

    python benchmarks/hypergrid_speed.py                       # the full grid
    python benchmarks/hypergrid_speed.py --quick               # 2D/4D height 8, batch 16 and 1024
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import loop, objectives
from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.experiments.runner import init_state, make_step
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.optim import OptimConfig


def matmul_gflops(m: int, k: int, n: int, min_time: float = 0.5, trials: int = 3) -> float:
    """Best of ``trials`` timings of a float32 (m x k) @ (k x n) product, in GFLOP/s."""
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = 0.0
    for _ in range(trials):
        reps, t = 0, 0.0
        t0 = time.perf_counter()
        while t < min_time:
            f(a, b).block_until_ready()
            reps += 1
            t = time.perf_counter() - t0
        best = max(best, 2.0 * m * k * n * reps / t / 1e9)
    return best


def bench_one(ndim, height, batch, hidden, n_layers, separate, loss, min_time, max_chunk,
              buckets=None):
    env = HyperGrid(ndim, height, r0=1e-3)
    module = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=hidden, n_layers=n_layers,
                       shared_torso=not separate)
    gfn = GFlowNet(env, module, objectives.get(loss), eval_buckets=buckets)
    state, tx = init_state(gfn, OptimConfig(), 0)
    update = make_step(gfn, tx, batch, state_index=False)
    # chunk: enough steps that one chunk takes ~0.2 s at a guessed speed, at most max_chunk
    T = env.max_steps
    fl_state = module.flops(env.feature_dim)
    fl_fwd = module.flops(env.feature_dim, forward_only=True)
    flops_step = float(batch * (T + 1) * (fl_fwd + 3 * fl_state))
    chunk = int(np.clip(2e10 / max(flops_step, 1.0), 1, max_chunk))
    run_chunk = loop.make_chunk(update, chunk)
    t0 = time.perf_counter()
    compiled = run_chunk.lower(state).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state)  # warm-up run
    jax.block_until_ready(state)
    steps, t = 0, 0.0
    t0 = time.perf_counter()
    while t < min_time:
        state, m = compiled(state)
        jax.block_until_ready(state)
        steps += chunk
        t = time.perf_counter() - t0
    sps = steps / t
    return dict(ndim=ndim, height=height, batch=batch, max_steps=T, chunk=chunk,
                compile_s=round(compile_s, 3), steps_per_s=round(sps, 2),
                ms_per_step=round(1e3 / sps, 4), traj_per_s=round(sps * batch, 1),
                flops_per_step=flops_step, gflops=round(flops_step * sps / 1e9, 2),
                final_loss=float(np.asarray(m["loss"])[-1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ndims", type=int, nargs="+", default=[2, 4])
    p.add_argument("--heights", type=int, nargs="+", default=[8, 32])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=3, help="layers of each MLP incl. the input projection (default 3)")
    p.add_argument("--shared-torso", action="store_true", help="one torso for P_F and P_B (gfnx style)")
    p.add_argument("--loss", default="tb")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of steady-state timing per config")
    p.add_argument("--max-chunk", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="height 8 only, batch 16 and 1024")
    p.add_argument("--pack", default="", help="pack real states into buckets before the loss pass, "
                   "e.g. 0.25,0.5,0.75,1 (GFlowNet.eval_buckets; FLOPs are still counted for all states)")
    p.add_argument("--out", default="bench_out/hypergrid_speed.json")
    args = p.parse_args(argv)
    if args.quick:
        args.heights, args.batch_sizes, args.min_time = [8], [16, 1024], 1.0

    buckets = tuple(float(x) for x in args.pack.split(",")) if args.pack else None
    dev = jax.devices()[0]
    print(f"# HyperGrid speed on {dev.platform} ({dev.device_kind}), jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    peak_sq = matmul_gflops(2048, 2048, 2048)
    peak_layer = matmul_gflops(16 * 1024, args.hidden, args.hidden)
    print(f"matmul peak: {peak_sq:.1f} GFLOP/s at 2048^3, {peak_layer:.1f} GFLOP/s at "
          f"{16 * 1024}x{args.hidden}x{args.hidden}\n", flush=True)
    rows = []
    hdr = ("| ndim | H | batch | T | compile s | steps/s | ms/step | traj/s | GFLOP/s | % peak |\n"
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(hdr, flush=True)
    for ndim in args.ndims:
        for height in args.heights:
            for batch in args.batch_sizes:
                r = bench_one(ndim, height, batch, args.hidden, args.n_layers, not args.shared_torso,
                              args.loss, args.min_time, args.max_chunk, buckets)
                r["pct_peak"] = round(100 * r["gflops"] / peak_sq, 1)
                rows.append(r)
                print(f"| {ndim} | {height} | {batch} | {r['max_steps']} | {r['compile_s']:.2f} | "
                      f"{r['steps_per_s']:.1f} | {r['ms_per_step']:.3f} | {r['traj_per_s']:.0f} | "
                      f"{r['gflops']:.1f} | {r['pct_peak']:.1f} |", flush=True)
    out = dict(device=str(dev), platform=dev.platform, jax=jax.__version__, cpus=os.cpu_count(),
               machine=platform.machine(), loss=args.loss, hidden=args.hidden, n_layers=args.n_layers,
               separate_torsos=not args.shared_torso, eval_buckets=buckets, matmul_peak_gflops=round(peak_sq, 1),
               matmul_layer_gflops=round(peak_layer, 1), rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
