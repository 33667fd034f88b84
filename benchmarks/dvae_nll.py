"""Discrete VAE: test NLL table (GFlowNet-EM, greedy, factorised, VQ-VAE) and E-/M-step speed.

For every K in --codes, method in --methods and seed in --seeds it trains ``gfnem train dvae``
(``gfnem_jax.experiments.dvae.run``) for --steps steps, then evaluates the test NLL in nats per
held-out image (``evaluate_run``: importance sampling with --is-samples samples from the encoder;
the VQ-VAE bound -log p(x|z_enc) + 16 log K). Prints a markdown table of mean +- std over seeds
with the wall time, and the speed of E-steps and M-steps at --batch-size (compile time separate:
a chunk of n steps of each side is timed on its first call (compile + run) and its second).

    python benchmarks/dvae_nll.py --quick       # K = 4, 1 seed, 200 steps, 200 IS samples
    python benchmarks/dvae_nll.py               # K = 4, 8, 10; 3 seeds; 3200 steps; 5000 samples

Writes JSON to --out (benchmarks/results/dvae_cpu.json by default).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import loop
from gfnem_jax.experiments import dvae

ROOT = os.path.dirname(os.path.abspath(__file__))


def speed(s: dvae.DVAESettings, n: int = 20) -> dict:
    """E-steps/s and M-steps/s at s.batch_size: a chunk of n steps of one phase (the run's own
    chunks, ``dvae_parts.Built.make_chunk``), timed on its first call (compile + run) and its
    second (run only); compile_s = the difference."""
    s = s.replace(e_steps=n, m_steps=n, steps=4 * n)
    train, _ = dvae.load_data(s)
    b = dvae.Built(s, train.shape[1:], jnp.asarray(train[0]))
    x = jnp.asarray(train)
    run_chunk = b.make_chunk(n, len(train))
    res = {"n": n}
    st = b.state
    for name in ["m"] if s.method == "vqvae" else ["e", "m"]:
        times = []
        for _ in range(2):  # the same phase twice: from the phase's start both times
            t0 = time.perf_counter()
            st2, m = run_chunk(st, x)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        st = st2
        res[f"{name}_steps_per_s"] = n / times[1]
        res[f"{name}_compile_s"] = times[0] - times[1]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--codes", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=list(dvae.METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cycle", type=int, default=None, help="E-steps (= M-steps) per cycle")
    ap.add_argument("--is-samples", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data", default="digits", help="digits, shapes (generated 28x28) or a path")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256, help="encoder state-MLP width")
    ap.add_argument("--n-test", type=int, default=0, help="held-out images evaluated (0 = all)")
    ap.add_argument("--logz", default="scalar", choices=("scalar", "conditional"))
    ap.add_argument("--lr-logz", type=float, default=0.1)
    ap.add_argument("--speed-steps", type=int, default=20, help="0 = skip the speed table")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "dvae_cpu.json"))
    a = ap.parse_args(argv)
    codes = a.codes or ([4] if a.quick else [4, 8, 10])
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    steps = a.steps or (200 if a.quick else 3200)
    cycle = a.cycle or (50 if a.quick else 400)
    S = a.is_samples or (200 if a.quick else 5000)
    rows, results = [], []
    spd = {}
    for m in (a.methods if a.speed_steps > 0 else []):
        s = dvae.DVAESettings(method=m, codes=codes[0], batch_size=a.batch_size, data=a.data,
                              grid=a.grid, channels=a.channels, hidden=a.hidden)
        spd[m] = speed(s, a.speed_steps)
        print(f"speed {m}: {json.dumps({k: round(v, 3) for k, v in spd[m].items()})}", flush=True)
    tmp = tempfile.mkdtemp(prefix="dvae_bench_")
    try:
        for K in codes:
            for m in a.methods:
                nll, wall = [], []
                for seed in seeds:
                    s = dvae.DVAESettings(method=m, codes=K, seed=seed, steps=steps, e_steps=cycle,
                                          m_steps=cycle, batch_size=a.batch_size, data=a.data,
                                          grid=a.grid, channels=a.channels, hidden=a.hidden,
                                          n_test=a.n_test, log_every=_log_every(steps, cycle),
                                          logz=a.logz, lr_logz=a.lr_logz,
                                          plot=False)
                    print(f"  K={K} {m} seed {seed}: training {steps} steps", flush=True)
                    out = os.path.join(tmp, f"{m}_{K}_{seed}")
                    t0 = time.perf_counter()
                    dvae.run(s, out, progress=False)
                    t_train = time.perf_counter() - t0
                    e = dvae.evaluate_run(out, S)
                    results.append({"method": m, "codes": K, "seed": seed, "nll": e["nll"],
                                    "nll_sem": e["nll_sem"], "bound": e["bound"],
                                    "train_s": t_train, "eval_s": e["eval_wall_s"]})
                    nll.append(e["nll"])
                    wall.append(t_train)
                    print(json.dumps(results[-1]), flush=True)
                    write(a, codes, seeds, steps, cycle, S, spd, rows, results)
                rows.append((K, m, float(np.mean(nll)), float(np.std(nll)), float(np.mean(wall))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n| K | method | test NLL (nats) | IS s.e. | train s/run |\n|---|---|---|---|---|")
    for K, m, mu, sd, w in rows:
        se = np.mean([r["nll_sem"] for r in results if r["codes"] == K and r["method"] == m])
        print(f"| {K} | {m} | {mu:.2f} +- {sd:.2f} | {se:.2f} | {w:.0f} |")
    write(a, codes, seeds, steps, cycle, S, spd, rows, results)
    print(f"wrote {a.out}")


def _log_every(steps: int, cycle: int) -> int:
    """The largest divisor of the cycle that is at most steps / 4 (a chunk never straddles a phase)."""
    for n in range(max(1, min(cycle, steps // 4)), 0, -1):
        if cycle % n == 0:
            return n
    return 1


def write(a, codes, seeds, steps, cycle, S, spd, rows, results):
    """Write everything measured so far to a.out (called after every run, so an interrupted
    benchmark keeps its finished runs)."""
    meta = {"quick": a.quick, "codes": codes, "seeds": seeds, "steps": steps, "cycle": cycle,
            "is_samples": S, "batch_size": a.batch_size, "data": a.data, "grid": a.grid,
            "channels": a.channels, "hidden": a.hidden, "n_test": a.n_test, "logz": a.logz,
            "lr_logz": a.lr_logz,
            "device": jax.devices()[0].device_kind, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    table = [{"codes": K, "method": m, "nll_mean": mu, "nll_std": sd, "train_s_mean": w}
             for K, m, mu, sd, w in rows]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump({"meta": meta, "speed": spd, "table": table, "runs": results}, f, indent=2)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
