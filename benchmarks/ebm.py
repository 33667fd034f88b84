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
At d > 20 (``--d32``: 16 bits per coordinate) the NLL is an AIS estimate with its standard
error, on the curve (``--curve-ais-chains/temps``) and at the end (``--ais-chains/temps``, with the
MMD to held-out points and the EB-GFN paper's NLL beside it).
Writes benchmarks/results/ebm_cpu.json (ebm_d32_cpu.json at d = 32; or --out) and prints a table.

    python benchmarks/ebm.py --quick          # 2 densities, 1 seed, 5 s budget: a smoke run
    python benchmarks/ebm.py                  # 7 densities x 4 methods x 3 seeds, 30 s each
    python benchmarks/ebm.py --steps 20000 --eval-every 1000 --out benchmarks/results/ebm_conv.json
        # a step budget instead: every run trains 20,000 steps and records its held-out NLL curve
        # ("curve": [step, test_nll, train_s]), printed as it goes; after every finished run the
        # output is rewritten, and --resume skips the (density, method, seed) runs already in it;
        # every density's seed 0 runs before any seed 1; the unfinished run's loop state is saved
        # at every curve point (OUT.ckpt/) and a rerun continues it exactly
    python benchmarks/ebm.py --d32 --steps 5000 --eval-every 1000 --methods gfn-cd,pcd,gwg
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

from gfnem_jax.data import toy2d
from gfnem_jax import checkpoint, ebgfn
from gfnem_jax.experiments import ebm, ebm_eval
from gfnem_jax.models import energy as em

METHODS = ebm.METHODS
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "results", "ebm_cpu.json")


def heldout_nll(e, phi, test, key, chains, temps):
    """(held-out NLL, its standard error): exact (se 0) for d <= 20, else AIS from the uniform
    distribution with ``chains`` chains and ``temps`` temperatures (the s.e. of its log Z)."""
    if e.d <= em.MAX_EXACT_D:
        return float(em.exact_nll(e.model, phi, test)), 0.0
    nll, se = ebm_eval.ais_nll(e.model, phi, test, key, chains, temps)
    return float(nll), float(se)


def run_one(e, run_chunk, train, test, seed, budget, chunk, with_tv=True, steps=0, eval_every=0,
            tag="", curve_ais=(32, 200), ckpt=None):
    """Train one run: ``steps`` steps if > 0 (else for ``budget`` seconds), the held-out NLL every
    ``eval_every`` steps (steps mode; a multiple of ``chunk``) into "curve" rows [step, test_nll,
    train_s] (d > 20: [step, AIS NLL, train_s, s.e.] with ``curve_ais`` = (chains, temperatures),
    one AIS key for the whole curve), evaluation time excluded, printed as progress.

    ckpt: a folder (steps mode): the loop state, the curve and the training seconds are saved
    there at every curve point (``gfnem_jax.checkpoint``, verified, newest kept) and a run that
    finds one continues from it, exactly as if it had not stopped."""
    st = ebgfn.init_state(e, seed)
    n, curve, train_s = 0, [], 0.0
    if ckpt and steps > 0:
        st, path = checkpoint.restore_newest(ckpt, st)
        if path is not None:
            curve = checkpoint.load_extra(path, "curve").tolist()
            n, train_s = int(st.step), float(checkpoint.load_extra(path, "train_s"))
            print(f"    {tag}: resumed at step {n} from {path}", flush=True)
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(7)
    m = None
    while (n < steps) if steps > 0 else (time.perf_counter() - t0 < budget):
        t1 = time.perf_counter()
        st, m = run_chunk(st, train)
        jax.block_until_ready(st.model)
        train_s += time.perf_counter() - t1
        n += chunk
        if not np.isfinite(float(m["m_loss"][-1])):
            break
        if steps > 0 and eval_every and n % eval_every == 0:
            nll, se = heldout_nll(e, st.model, test, key, *curve_ais)
            curve.append([n, round(nll, 4), round(train_s, 1)] + ([round(se, 4)] if se else []))
            how = f" (AIS s.e. {se:.3f})" if se else ""
            print(f"    {tag} step {n}/{steps}: test NLL {nll:.3f}{how} ({train_s:.0f} s)", flush=True)
            if ckpt:
                checkpoint.save(ckpt, st, keep=1, extras={"curve": np.asarray(curve, np.float64),
                                                          "train_s": np.asarray(train_s)})
        elif steps <= 0:
            curve.append([n, None, round(train_s, 2)])
    wall = train_s if steps > 0 else time.perf_counter() - t0
    out = {"steps": n, "train_s": round(wall, 2), "curve": curve}
    if m is not None:
        out.update(final_gfn_loss=float(m["loss"][-1]),
                   final_accept=float(m["accept"][-1]) if "accept" in m else 0.0)
    return st, out


def finish_exact(e, st, out, test, seed, with_tv):
    """d <= 20: the exact held-out NLL, and the GFlowNet's TV to p_phi (gfn, gfn-cd) if with_tv."""
    out["test_nll"] = float(em.exact_nll(e.model, st.model, test))
    if with_tv and e.settings.method in ("gfn", "gfn-cd"):
        t1 = time.perf_counter()
        tv, how = ebm_eval.sampler_tv(e, st.sampler, st.model, jax.random.PRNGKey(seed + 1000))
        out.update(sampler_tv=tv, sampler_tv_method=how, tv_s=round(time.perf_counter() - t1, 2))
    return out


PAPER_D32 = {"2spirals": 20.05, "8gaussians": 19.98, "circles": 20.55, "pinwheel": 19.55}  # EB-GFN NLL


def paper_same_grid(name, r):
    """The paper's d = 32 NLL moved to a grid of half-width r: + 2 log(R_paper / r) (smaller cells
    hold less mass each: the NLL rises by the log of the cells' area ratio; the paper quantises on
    toy2d.PAPER_RANGE[name]). None without a paper number."""
    if name not in PAPER_D32:
        return None
    return PAPER_D32[name] + 2 * float(np.log(toy2d.PAPER_RANGE[name] / r))


def finish_ais(e, st, out, test, seed, a):
    """d > 20: the final AIS NLL (--ais-chains, --ais-temps) with its s.e., and the MMD between
    2,000 model samples (the GFlowNet's; for pcd / gwg the chains run on for 100
    Gibbs-with-gradients steps) and held-out points."""
    from gfnem_jax import mcmc

    key = jax.random.PRNGKey(5 + 1000 * seed)
    t1 = time.perf_counter()
    out["ais_nll"], out["log_z_se"] = heldout_nll(e, st.model, test, key, a.ais_chains, a.ais_temps)
    out["test_nll"] = out["ais_nll"]
    n = min(2000, test.shape[0])
    if e.settings.method in ("gfn", "gfn-cd"):
        samp = ebm_eval.sample_gfn(e, st.sampler, st.model, key, n)
    else:
        x = jnp.tile(st.sampler, (n // st.sampler.shape[0] + 1, 1))[:n]
        samp = np.asarray(mcmc.gwg(e.model.energy, st.model, key, x, 100)[0], np.uint8)
    out["mmd"] = ebm_eval.mmd(samp, test[:n])
    out["eval_s"] = round(time.perf_counter() - t1, 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 densities, 1 seed, 5 s budget")
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--grid-range", type=float, default=4.0,
                    help="quantise on [-R, R)^2 (0: the EB-GFN paper's R per density, its NLLs compare directly)")
    ap.add_argument("--densities", default=",".join(toy2d.NAMES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--hidden", type=int, default=256, help="width of the energy MLP and of the GFlowNet MLP")
    ap.add_argument("--mcmc-steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=0, help="gfn-cd's steps back (0: d, the run kind's default)")
    ap.add_argument("--gfn-updates", type=int, default=0,
                    help="sampler updates per energy update (0: the run kind's default per method)")
    ap.add_argument("--steps", type=int, default=0, help="train every run this many steps (0: --budget seconds)")
    ap.add_argument("--eval-every", type=int, default=1000, help="with --steps: steps between held-out NLL points")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished runs already in --out and continue an unfinished one from its checkpoint")
    ap.add_argument("--energy-lr", type=float, default=1e-3)
    ap.add_argument("--energy-l2", type=float, default=0.01)
    ap.add_argument("--lr-logz", type=float, default=0.1)
    ap.add_argument("--tv-seeds", type=int, default=1, help="seeds (from 0) whose GFlowNet TV is measured")
    ap.add_argument("--chunk", type=int, default=10, help="steps per jitted chunk (budget granularity)")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--d32", action="store_true",
                    help="--bits 16 (d = 32): the NLL by AIS (curve points and the final one) and MMD")
    ap.add_argument("--curve-ais-chains", type=int, default=32, help="d > 20: AIS chains of a curve point")
    ap.add_argument("--curve-ais-temps", type=int, default=200, help="d > 20: AIS temperatures of a curve point")
    ap.add_argument("--ais-chains", type=int, default=64)
    ap.add_argument("--ais-temps", type=int, default=300)
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    dens = a.densities.split(",")
    seeds = a.seeds
    if a.quick:
        dens, seeds, a.budget = dens[:2], 1, 5.0
    methods = a.methods.split(",")
    if a.d32:
        a.bits = 16
    if a.bits > 10 and a.out == DEFAULT_OUT:  # d > 20: its own file, not the d = 16 table's
        a.out = DEFAULT_OUT.replace("ebm_cpu.json", f"ebm_d{2 * a.bits}_cpu.json")
    d = 2 * a.bits
    exact = d <= em.MAX_EXACT_D
    print(f"EB-GFN benchmark: d={d}, densities={dens}, methods={methods}, seeds={seeds}, "
          f"budget {f'{a.steps} steps' if a.steps > 0 else f'{a.budget:.0f} s'}/run, hidden {a.hidden}, "
          f"NLL {'exact' if exact else f'AIS ({a.ais_chains} chains, {a.ais_temps} temperatures)'}, "
          f"devices {jax.devices()}", flush=True)

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

    if a.steps > 0 and (a.eval_every % a.chunk or a.steps % a.chunk):
        raise SystemExit(f"--steps and --eval-every must be multiples of --chunk {a.chunk}")
    results, floors = [], {}
    if a.resume and os.path.isfile(a.out):
        with open(a.out) as f:
            results = json.load(f)["runs"]
        print(f"  resuming: {len(results)} finished runs in {a.out}", flush=True)
    done = {(r["density"], r["method"], r["seed"]) for r in results}
    for name in dens:
        floors[name] = (toy2d.entropy_floor(name, a.bits, np.random.default_rng([99, 0]), n=2_000_000,
                                            r=toy2d.resolve_range(a.grid_range, name))
                        if exact else None)
    for seed in range(seeds):  # every density's first seed before any second seed
        for name in dens:
            rng = np.random.default_rng([seed, 0])
            rng_r = toy2d.resolve_range(a.grid_range, name)
            train = jnp.asarray(toy2d.make_data(name, a.bits, a.n_train, rng, rng_r), jnp.float32)
            test = toy2d.make_data(name, a.bits, a.n_test, rng, rng_r)
            for m in methods:
                if (name, m, seed) in done:
                    continue
                e, rc = runners[m]
                ck = os.path.join(a.out + ".ckpt", f"{name}_{m}_{seed}") if a.steps > 0 else None
                if ck and not a.resume:  # a fresh benchmark: no partial run continues
                    shutil.rmtree(ck, ignore_errors=True)
                st, r = run_one(e, rc, train, test, seed, a.budget, a.chunk, seed < a.tv_seeds,
                                a.steps, a.eval_every, f"{name} {m} seed {seed}",
                                (a.curve_ais_chains, a.curve_ais_temps), ck)
                if exact:
                    r = finish_exact(e, st, r, test, seed, seed < a.tv_seeds)
                    r.update(floor=floors[name])
                else:
                    r = finish_ais(e, st, r, test, seed, a)
                    r.update(paper_nll=PAPER_D32.get(name), paper_nll_same_grid=paper_same_grid(name, rng_r))
                r.update(density=name, method=m, seed=seed)
                results.append(r)
                _write(a, d, {}, results)
                if ck:  # the finished run is in the results: its checkpoint is no longer needed
                    shutil.rmtree(ck, ignore_errors=True)
                tv = f" tv={r['sampler_tv']:.3f}({r['sampler_tv_method']})" if "sampler_tv" in r else ""
                extra = (f"(floor {floors[name]:.3f}){tv}" if exact else
                         f"(AIS s.e. {r['log_z_se']:.3f}), MMD {r['mmd']:.5f}, paper {r['paper_nll']} "
                         f"(on this grid {r['paper_nll_same_grid'] or float('nan'):.3f})")
                print(f"  {name:12s} {m:7s} seed {seed}: {r['steps']:5d} steps, test NLL {r['test_nll']:.3f} "
                      f"{extra}", flush=True)

    # table: mean +- std over seeds
    how = f"{a.steps} steps" if a.steps > 0 else f"{a.budget:.0f} s"
    print(f"\n{'exact' if exact else 'AIS'} held-out NLL (nats) after {how} of training, mean ± std over {seeds} seed(s); "
          f"uniform model = {d * np.log(2):.3f}")
    head = f"{'density':12s} {'floor' if exact else 'paper':>7s} " + " ".join(f"{m:>15s}" for m in methods) + "   TV gfn / gfn-cd"
    print(head)
    table = {}
    for name in dens:
        ref = floors[name] if exact else paper_same_grid(name, toy2d.resolve_range(a.grid_range, name))
        row = f"{name:12s} {ref if ref is not None else float('nan'):7.3f} "
        table[name] = {"floor": floors[name]} if exact else {"paper_nll": ref}
        tvs = []
        for m in methods:
            v = np.array([r["test_nll"] for r in results if r["density"] == name and r["method"] == m])
            if not v.size:
                continue
            table[name][m] = {"nll_mean": float(v.mean()), "nll_std": float(v.std()),
                              "steps_mean": float(np.mean([r["steps"] for r in results
                                                           if r["density"] == name and r["method"] == m]))}
            row += f" {v.mean():8.3f}±{v.std():5.3f}"
            t = [r["sampler_tv"] for r in results if r["density"] == name and r["method"] == m and "sampler_tv" in r]
            if t:
                table[name][m]["tv_mean"] = float(np.mean(t))
                tvs.append(f"{np.mean(t):.3f}")
        print(row + "   " + " / ".join(tvs))
    _write(a, d, table, results)
    print(f"wrote {a.out}")


def _write(a, d, table, results):
    """Everything so far to a.out (atomically): after every run, so an interrupted benchmark
    keeps its finished runs (``--resume`` continues from them)."""
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump({"settings": vars(a), "d": d, "machine": platform.processor() or platform.machine(),
                   "jax": jax.__version__, "devices": str(jax.devices()), "table": table, "runs": results},
                  f, indent=2)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
