"""Discrete VAE: test NLL table (GFlowNet-EM, greedy, factorised, VQ-VAE) and E-/M-step speed.

For every K in --codes, method in --methods and seed in --seeds it trains ``gfnem train dvae``
(``gfnem_jax.experiments.dvae.run``) for --steps steps, then evaluates the test NLL in nats per
held-out image (``evaluate_run``: importance sampling with --is-samples samples from the encoder;
the VQ-VAE bound -log p(x|z_enc) + 16 log K). Prints a markdown table of mean +- std over seeds
with the wall time, and the speed of E-steps and M-steps at --batch-size (compile time separate:
a chunk of n steps of each side is timed on its first call (compile + run) and its second).

Beside the table: a model with no latent (independent pixels at the training set's frequencies)
on the same test images, and paired per-image differences between methods trained with the same
seed (gflownet - factorized, ...; the images' shared difficulty cancels, so the s.e. is that of
the difference). Each run trains in OUT.runs/ (checkpointed) and is deleted once evaluated;
``--resume`` skips the runs already in --out and continues an interrupted one where it stopped.

    python benchmarks/dvae_nll.py --quick       # K = 4, 1 seed, 200 steps, 200 IS samples
    python benchmarks/dvae_nll.py               # K = 4, 8, 10; 3 seeds; 3200 steps; 5000 samples

Writes JSON to --out (benchmarks/results/dvae_cpu.json by default) after every run, with every
run's per-image NLLs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import loop
from gfnem_jax.experiments import dvae, dvae_eval

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
    ap.add_argument("--data", default="digits", help="digits, shapes or wires (generated 28x28) or a path")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256, help="encoder state-MLP width")
    ap.add_argument("--n-test", type=int, default=0, help="held-out images evaluated (0 = all)")
    ap.add_argument("--logz", default="scalar", choices=("scalar", "conditional"))
    ap.add_argument("--lr-logz", type=float, default=0.1)
    ap.add_argument("--speed-steps", type=int, default=20, help="0 = skip the speed table")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "dvae_cpu.json"))
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted benchmark: skip the runs finished in --out and "
                         "resume an unfinished one from its checkpoint (in OUT.runs/)")
    a = ap.parse_args(argv)
    codes = a.codes or ([4] if a.quick else [4, 8, 10])
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    steps = a.steps or (200 if a.quick else 3200)
    cycle = a.cycle or (50 if a.quick else 400)
    S = a.is_samples or (200 if a.quick else 5000)
    spd = {}
    for m in (a.methods if a.speed_steps > 0 else []):
        s = dvae.DVAESettings(method=m, codes=codes[0], batch_size=a.batch_size, data=a.data,
                              grid=a.grid, channels=a.channels, hidden=a.hidden)
        spd[m] = speed(s, a.speed_steps)
        print(f"speed {m}: {json.dumps({k: round(v, 3) for k, v in spd[m].items()})}", flush=True)
    runs_dir = a.out + ".runs"  # run directories (checkpoints) of unfinished runs
    results = []
    if a.resume and os.path.isfile(a.out):
        with open(a.out) as f:
            results = json.load(f)["runs"]
        print(f"  resuming: {len(results)} finished runs in {a.out}", flush=True)
    done = {(r["method"], r["codes"], r["seed"]) for r in results}
    s0 = dvae.DVAESettings(data=a.data, grid=a.grid, n_test=a.n_test, batch_size=a.batch_size)
    base = dvae_eval.independent_pixels_nll(*dvae.load_data(s0))
    print(f"  no-latent model (independent pixels): test NLL {np.mean(base):.2f} "
          f"(s.e. {np.std(base, ddof=1) / np.sqrt(len(base)):.2f} over {len(base)} images)", flush=True)
    floor = data_floor(a.data, s0)
    if floor is not None:
        print(f"  the data's own law (exact): test NLL {floor['nll']:.2f}, entropy {floor['entropy']:.2f} "
              f"nats (what a perfect model reaches)", flush=True)
    for K in codes:
        for m in a.methods:
            for seed in seeds:
                if (m, K, seed) in done:
                    continue
                s = dvae.DVAESettings(method=m, codes=K, seed=seed, steps=steps, e_steps=cycle,
                                      m_steps=cycle, batch_size=a.batch_size, data=a.data,
                                      grid=a.grid, channels=a.channels, hidden=a.hidden,
                                      n_test=a.n_test, log_every=_log_every(steps, cycle),
                                      logz=a.logz, lr_logz=a.lr_logz,
                                      plot=False)
                out = os.path.join(runs_dir, f"{m}_K{K}_s{seed}")
                resume = a.resume and os.path.isfile(os.path.join(out, "config.json"))
                if not resume:  # a fresh benchmark: no partial run continues
                    shutil.rmtree(out, ignore_errors=True)
                print(f"  K={K} {m} seed {seed}: {'resuming' if resume else 'training'} {steps} steps",
                      flush=True)
                t0 = time.perf_counter()
                fin = dvae.run(s, out, progress=False, resume=resume)["final"]
                t_train = time.perf_counter() - t0
                print(f"    trained in {t_train:.0f} s (test -ELBO {fin.get('test_bound', float('nan')):.2f}); "
                      f"evaluating ({S} IS samples per image)", flush=True)
                e = dvae.evaluate_run(out, S, per_image=True)
                results.append({"method": m, "codes": K, "seed": seed, "nll": e["nll"],
                                "nll_sem": e["nll_sem"], "bound": e["bound"],
                                "test_elbo_bound": fin.get("test_bound"), "resumed": resume,
                                "train_s": t_train, "eval_s": e["eval_wall_s"],
                                "per_image_nll": e["per_image_nll"]})
                print(json.dumps({k: v for k, v in results[-1].items() if k != "per_image_nll"}),
                      flush=True)
                write(a, codes, seeds, steps, cycle, S, spd, results, base, floor)
                shutil.rmtree(out, ignore_errors=True)  # finished: its result is in --out
    shutil.rmtree(runs_dir, ignore_errors=True)
    table, paired = summarize(results, base)
    print(f"\n| K | method | test NLL (nats) | s.e. over images | train s/run |\n|---|---|---|---|---|")
    for r in table:
        print(f"| {r['codes']} | {r['method']} | {r['nll_mean']:.2f} +- {r['nll_std']:.2f} | "
              f"{r['is_sem_mean']:.2f} | {r['train_s_mean']:.0f} |")
    print(f"| | no latent | {np.mean(base):.2f} | | |")
    if floor is not None:
        print(f"| | the data's law (exact) | {floor['nll']:.2f} | | |")
    if paired:
        print("\nPaired per-image differences (A - B, nats; same images, same seed; mean +- s.e. "
              "over images, seeds pooled):\n| K | A | B | mean A - B | s.e. | seeds |\n|---|---|---|---|---|---|")
        for r in paired:
            print(f"| {r['codes']} | {r['a']} | {r['b']} | {r['mean']:+.2f} | {r['sem']:.2f} | {r['seeds']} |")
    write(a, codes, seeds, steps, cycle, S, spd, results, base, floor)
    print(f"wrote {a.out}")


def data_floor(data: str, s0):
    """For ``--data wires``: the exact NLL of the test images under the law that generated them
    (``gfnem_jax.data.wires.log_prob``) and its entropy; None for other data."""
    if data != "wires":
        return None
    from gfnem_jax.data import wires
    _, test = dvae.load_data(s0)
    nll = np.array([-wires.log_prob(x) for x in test])
    return {"nll": float(nll.mean()), "nll_sem": float(nll.std(ddof=1) / np.sqrt(len(nll))),
            "entropy": wires.entropy()}


def summarize(results, base):
    """(table rows: mean +- std over seeds per (K, method); paired rows: per-image differences
    between methods (and against the no-latent model) on the same images and seeds)."""
    table = []
    keys = sorted({(r["codes"], r["method"]) for r in results},
                  key=lambda km: (km[0], list(dvae.METHODS).index(km[1])))
    for K, m in keys:
        rs = [r for r in results if r["codes"] == K and r["method"] == m]
        v = np.array([r["nll"] for r in rs])
        table.append({"codes": K, "method": m, "nll_mean": float(v.mean()), "nll_std": float(v.std()),
                      "is_sem_mean": float(np.mean([r["nll_sem"] for r in rs])),
                      "train_s_mean": float(np.mean([r["train_s"] for r in rs])), "seeds": len(rs)})
    paired = []
    pairs = [("gflownet", "factorized"), ("gflownet", "greedy"), ("gflownet", "vqvae"),
             ("gflownet", None), ("factorized", None)]
    for K in sorted({r["codes"] for r in results}):
        by = {(r["method"], r["seed"]): np.asarray(r["per_image_nll"]) for r in results
              if r["codes"] == K and "per_image_nll" in r}
        for ma, mb in pairs:
            seeds = sorted(sd for (m, sd) in by if m == ma and (mb is None or (mb, sd) in by))
            if not seeds:
                continue
            d = np.concatenate([by[(ma, sd)] - (base if mb is None else by[(mb, sd)]) for sd in seeds])
            paired.append({"codes": K, "a": ma, "b": mb or "no latent", "mean": float(d.mean()),
                           "sem": float(d.std(ddof=1) / np.sqrt(len(d))), "seeds": len(seeds),
                           "n": int(len(d))})
    return table, paired


def _log_every(steps: int, cycle: int) -> int:
    """The largest divisor of the cycle that is at most steps / 4 (a chunk never straddles a phase)."""
    for n in range(max(1, min(cycle, steps // 4)), 0, -1):
        if cycle % n == 0:
            return n
    return 1


def write(a, codes, seeds, steps, cycle, S, spd, results, base, floor=None):
    """Write everything measured so far to a.out (called after every run, so an interrupted
    benchmark keeps its finished runs)."""
    meta = {"quick": a.quick, "codes": codes, "seeds": seeds, "steps": steps, "cycle": cycle,
            "is_samples": S, "batch_size": a.batch_size, "data": a.data, "grid": a.grid,
            "channels": a.channels, "hidden": a.hidden, "n_test": a.n_test, "logz": a.logz,
            "lr_logz": a.lr_logz,
            "device": jax.devices()[0].device_kind, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    table, paired = summarize(results, base)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump({"meta": meta, "speed": spd, "table": table, "paired": paired,
                   "no_latent": {"nll": float(np.mean(base)),
                                 "nll_sem": float(np.std(base, ddof=1) / np.sqrt(len(base)))},
                   "data_law": floor,
                   "runs": results}, f, indent=2)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
