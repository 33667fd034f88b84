"""EB-GFN benchmark: exact held-out NLL of gfn, gfn-cd, pcd and gwg after the same wall-clock budget.

For each 2-D density quantised to d = 2 * bits (default 8 bits per coordinate, d = 16), each
method and each seed: train the same energy MLP for ``--budget`` seconds of training wall-clock
(compilation excluded: every method's chunk is compiled once, before any timing, and shared by
all densities and seeds), then measure
  test_nll    exact held-out NLL (log Z by enumeration of 2^d states), nats;
  floor       entropy of the discretised density (plug-in, 2M fresh samples): the lowest
              expected held-out NLL any model can reach;
  sampler_tv  TV(GFlowNet terminal distribution, p_phi) for gfn / gfn-cd: exact DP for d <= 10,
              otherwise the importance-sampling estimate with one P_B path per state.
Writes benchmarks/results/ebm_cpu.json (or --out) and prints a table.

    python benchmarks/ebm.py --quick          # 2 densities, 1 seed, 5 s budget: a smoke run
    python benchmarks/ebm.py                  # 7 densities x 4 methods x 3 seeds
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

from gfnem_jax.data import toy2d
from gfnem_jax import ebgfn
from gfnem_jax.experiments import ebm, ebm_eval
from gfnem_jax.models import energy as em

METHODS = ebm.METHODS


def run_one(e, run_chunk, train, test, seed, budget, chunk, with_tv=True):
    st = ebgfn.init_state(e, seed)
    t0 = time.perf_counter()
    steps, curve = 0, []
    while time.perf_counter() - t0 < budget:
        st, m = run_chunk(st, train)
        jax.block_until_ready(st.model)
        steps += chunk
        if not np.isfinite(float(m["m_loss"][-1])):
            break
        curve.append((round(time.perf_counter() - t0, 2), steps))
    wall = time.perf_counter() - t0
    nll = float(em.exact_nll(e.model, st.model, test))
    out = {"steps": steps, "train_s": round(wall, 2), "test_nll": nll, "final_gfn_loss": float(m["loss"][-1]),
           "final_accept": float(m["accept"][-1]) if "accept" in m else 0.0}
    if with_tv and e.settings.method in ("gfn", "gfn-cd"):
        t1 = time.perf_counter()
        tv, how = ebm_eval.sampler_tv(e, st.sampler, st.model, jax.random.PRNGKey(seed + 1000))
        out.update(sampler_tv=tv, sampler_tv_method=how, tv_s=round(time.perf_counter() - t1, 2))
    return out


PAPER_D32 = {"2spirals": 20.05, "8gaussians": 19.98, "circles": 20.55, "pinwheel": 19.55}  # EB-GFN NLL


def run_d32(a, methods, dens):
    """d = 32 (16 bits per coordinate): AIS NLL and MMD to held-out data after the budget."""
    from gfnem_jax import mcmc

    rows = []
    for m in methods:
        s = ebm.EBMSettings(method=m, bits=16, energy_hidden=a.hidden, gfn_hidden=a.hidden,
                            mcmc_steps=a.mcmc_steps, k=a.k, gfn_updates=a.gfn_updates, lr=a.energy_lr,
                            energy_l2=a.energy_l2, lr_logz=a.lr_logz)
        e = ebgfn.make(s, 32)
        rc = ebgfn.make_chunk(e, a.chunk)
        jax.block_until_ready(rc(ebgfn.init_state(e, 0), jnp.zeros((a.n_train, 32), jnp.float32))[0].model)
        for name in dens:
            rng = np.random.default_rng([0, 0])
            train = jnp.asarray(toy2d.make_data(name, 16, a.n_train, rng), jnp.float32)
            test = toy2d.make_data(name, 16, a.n_test, rng)
            st = ebgfn.init_state(e, 0)
            t0, steps = time.perf_counter(), 0
            while time.perf_counter() - t0 < a.budget:
                st, _ = rc(st, train)
                jax.block_until_ready(st.model)
                steps += a.chunk
            key = jax.random.PRNGKey(5)
            nll, se = ebm_eval.ais_nll(e.model, st.model, test, key, a.ais_chains, a.ais_temps)
            n = min(2000, test.shape[0])
            if m in ("gfn", "gfn-cd"):
                samp = ebm_eval.sample_gfn(e, st.sampler, st.model, key, n)
            else:  # the persistent chains (the sampler slot), run further with Gibbs-with-gradients
                x = jnp.tile(st.sampler, (n // st.sampler.shape[0] + 1, 1))[:n]
                samp = np.asarray(mcmc.gwg(e.model.energy, st.model, key, x, 100)[0], np.uint8)
            r = {"density": name, "method": m, "steps": steps, "ais_nll": nll, "log_z_se": se,
                 "mmd": ebm_eval.mmd(samp, test[:n]), "paper_nll": PAPER_D32.get(name)}
            print(f"  d=32 {name:12s} {m:7s}: {steps} steps, AIS NLL {nll:.2f} (se {se:.2f}), "
                  f"MMD {r['mmd']:.4f}, paper {r['paper_nll']}", flush=True)
            rows.append(r)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 densities, 1 seed, 5 s budget")
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--densities", default=",".join(toy2d.NAMES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--hidden", type=int, default=256, help="width of the energy MLP and of the GFlowNet MLP")
    ap.add_argument("--mcmc-steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--gfn-updates", type=int, default=1, help="sampler updates per energy update")
    ap.add_argument("--energy-lr", type=float, default=1e-3)
    ap.add_argument("--energy-l2", type=float, default=0.01)
    ap.add_argument("--lr-logz", type=float, default=0.1)
    ap.add_argument("--tv-seeds", type=int, default=1, help="seeds (from 0) whose GFlowNet TV is measured")
    ap.add_argument("--chunk", type=int, default=10, help="steps per jitted chunk (budget granularity)")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--d32", action="store_true", help="instead: d = 32, AIS NLL and MMD (first seed)")
    ap.add_argument("--ais-chains", type=int, default=64)
    ap.add_argument("--ais-temps", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ebm_cpu.json"))
    a = ap.parse_args(argv)
    dens = a.densities.split(",")
    seeds = a.seeds
    if a.quick:
        dens, seeds, a.budget = dens[:2], 1, 5.0
    methods = a.methods.split(",")
    if a.d32:
        rows = run_d32(a, methods, dens)
        out = a.out.replace("ebm_cpu.json", "ebm_d32_cpu.json")
        with open(out, "w") as f:
            json.dump({"settings": vars(a), "d": 32, "jax": jax.__version__, "runs": rows}, f, indent=2)
        print(f"wrote {out}")
        return
    d = 2 * a.bits
    print(f"EB-GFN benchmark: d={d}, densities={dens}, methods={methods}, seeds={seeds}, "
          f"budget {a.budget:.0f} s/run, hidden {a.hidden}, devices {jax.devices()}", flush=True)

    runners = {}
    for m in methods:  # compile every method once, before any timing
        s = ebm.EBMSettings(method=m, bits=a.bits, energy_hidden=a.hidden, gfn_hidden=a.hidden,
                            mcmc_steps=a.mcmc_steps, k=a.k, gfn_updates=a.gfn_updates, lr=a.energy_lr,
                            energy_l2=a.energy_l2, lr_logz=a.lr_logz)
        e = ebgfn.make(s, d)
        rc = ebgfn.make_chunk(e, a.chunk)
        t0 = time.perf_counter()
        jax.block_until_ready(rc(ebgfn.init_state(e, 0), jnp.zeros((a.n_train, d), jnp.float32))[0].model)
        print(f"  compiled {m} in {time.perf_counter() - t0:.1f} s", flush=True)
        runners[m] = (e, rc)

    results, floors = [], {}
    for name in dens:
        floors[name] = toy2d.entropy_floor(name, a.bits, np.random.default_rng([99, 0]), n=2_000_000)
        for seed in range(seeds):
            rng = np.random.default_rng([seed, 0])
            train = jnp.asarray(toy2d.make_data(name, a.bits, a.n_train, rng), jnp.float32)
            test = toy2d.make_data(name, a.bits, a.n_test, rng)
            for m in methods:
                e, rc = runners[m]
                r = run_one(e, rc, train, test, seed, a.budget, a.chunk, seed < a.tv_seeds)
                r.update(density=name, method=m, seed=seed, floor=floors[name])
                results.append(r)
                tv = f" tv={r['sampler_tv']:.3f}({r['sampler_tv_method']})" if "sampler_tv" in r else ""
                print(f"  {name:12s} {m:7s} seed {seed}: {r['steps']:5d} steps, test NLL {r['test_nll']:.3f} "
                      f"(floor {floors[name]:.3f}){tv}", flush=True)

    # table: mean +- std over seeds
    print(f"\nexact held-out NLL (nats) after {a.budget:.0f} s of training, mean ± std over {seeds} seed(s); "
          f"uniform model = {d * np.log(2):.3f}")
    head = f"{'density':12s} {'floor':>7s} " + " ".join(f"{m:>15s}" for m in methods) + "   TV gfn / gfn-cd"
    print(head)
    table = {}
    for name in dens:
        row = f"{name:12s} {floors[name]:7.3f} "
        table[name] = {"floor": floors[name]}
        tvs = []
        for m in methods:
            v = np.array([r["test_nll"] for r in results if r["density"] == name and r["method"] == m])
            table[name][m] = {"nll_mean": float(v.mean()), "nll_std": float(v.std()),
                              "steps_mean": float(np.mean([r["steps"] for r in results
                                                           if r["density"] == name and r["method"] == m]))}
            row += f" {v.mean():8.3f}±{v.std():5.3f}"
            t = [r["sampler_tv"] for r in results if r["density"] == name and r["method"] == m and "sampler_tv" in r]
            if t:
                table[name][m]["tv_mean"] = float(np.mean(t))
                tvs.append(f"{np.mean(t):.3f}")
        print(row + "   " + " / ".join(tvs))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"settings": vars(a), "d": d, "machine": platform.processor() or platform.machine(),
                   "jax": jax.__version__, "devices": str(jax.devices()), "table": table, "runs": results},
                  f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
