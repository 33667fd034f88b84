"""Structure learning: JSD to the exact posterior over DAGs (Malkin et al. 2023, "GFlowNets and
variational inference", its structure-learning table), d = 3, 4, 5.

For each d, a seeded Erdos-Renyi linear-Gaussian graph and its 100 observations
(``gfnem train dag``'s defaults: edge_prob 0.5, noise 1, data_seed 0), the BGe score, a uniform
structure prior and a fixed uniform P_B; each method trains an MLP policy for ``--steps`` steps
from ``--seeds`` seeds, and the sampler's exact terminal distribution (dynamic programming over
every DAG, no sampling) is compared with the exact posterior: the Jensen-Shannon divergence (nats)
and the mean edge-marginal error, both in float64 on the host (``jsd``, ``edge_error``; the
sampler's probabilities come from the float32 dynamic programme, renormalised); ``jsd_float32``
is the value the training run logs, whose rounding floor is about 1e-7.

Methods (the published numbers are the paper's, at its own budget and data, beside ours):

  tb_off           trajectory balance, off-policy: eps-uniform exploration (epsilon 0.1)
                   (published 3.7e-7 / 9.4e-6 / 5.4e-4 for d = 3 / 4 / 5)
  tb_on            trajectory balance, on-policy (published .022 / .123 / .277)
  reverse_kl       reverse KL, on-policy, REINFORCE with the learned log Z as baseline
                   (``baseline global``; published .022 / .125 / .306)
  mdb              DAG-GFlowNet's modified detailed balance: loss db with flow stop
                   (log F(s) = log R(s) - log P_F(stop | s)), off-policy (epsilon 0.1)
  reverse_kl_loo   reverse KL with the leave-one-out baseline (added by this project)
  renyi, tsallis   alpha = 0.5 divergences with LOO control variates (added by this project)

    python benchmarks/dag.py --steps 4000 --d 3 4 --methods tb_off tb_on reverse_kl mdb \
        reverse_kl_loo renyi tsallis --out benchmarks/results/dag_cpu_d34.json      # ~6 min, 2 cores
    python benchmarks/dag.py --steps 4000 --d 5 --out benchmarks/results/dag_cpu_d5.json  # ~3 min
    python benchmarks/dag.py --d 3 --steps 300 --seeds 1 --methods tb_off tb_on   # a smoke run

Writes ``--out`` (default benchmarks/results/dag_cpu.json): every run's JSD / edge error at each
evaluation, its seconds (compilation excluded) and the settings; prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PUBLISHED = {  # Malkin et al. 2023, structure learning, JSD to the exact posterior
    "tb_off": {3: 3.7e-7, 4: 9.4e-6, 5: 5.4e-4},
    "tb_on": {3: 0.022, 4: 0.123, 5: 0.277},
    "reverse_kl": {3: 0.022, 4: 0.125, 5: 0.306},
}
METHODS = {  # name -> settings of gfnem train dag
    "tb_off": {"loss": "tb", "epsilon": 0.1},
    "tb_on": {"loss": "tb", "epsilon": 0.0},
    "reverse_kl": {"loss": "reverse_kl", "baseline": "global", "epsilon": 0.0},
    "mdb": {"loss": "db", "flow": "stop", "epsilon": 0.1},
    "reverse_kl_loo": {"loss": "reverse_kl", "baseline": "loo", "epsilon": 0.0},
    "renyi": {"loss": "renyi", "alpha": 0.5, "control_variate": "loo", "epsilon": 0.0},
    "tsallis": {"loss": "tsallis", "alpha": 0.5, "control_variate": "loo", "epsilon": 0.0},
}


def run_method(d: int, method: str, seeds, steps: int, evals: int, common: dict):
    """Train ``method`` on d nodes from each seed; returns one record per seed."""
    import jax

    from gfnem_jax import loop
    from gfnem_jax.dag import posterior as dag_posterior
    from gfnem_jax.experiments import dag, runner

    s = dag.Settings(num_nodes=d, steps=steps, **common, **METHODS[method])
    s.validate()
    cfg = s.to_config()
    env, gfn, optim = runner.build(cfg)
    exact, _, _ = runner.make_evaluator(env, gfn, dag.exact_metrics(env))
    G = env.num_dags()
    adj, _, post = dag_posterior.exact_posterior(env.local_table())  # float64
    every = max(1, steps // evals)
    records = []
    chunk = None
    for seed in seeds:
        state, tx = runner.init_state(gfn, optim, seed)
        if chunk is None:  # compiled once per (d, method): every seed has the same shapes
            chunk = loop.make_chunk(runner.make_step(gfn, tx, s.batch_size), every)
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(state))
            compile_s = time.perf_counter() - t0
        curve, train_s, done = [], 0.0, 0
        while done < steps:
            t0 = time.perf_counter()
            state, m = chunk(state)
            jax.block_until_ready(state)
            train_s += time.perf_counter() - t0
            done += every
            vals, p = exact(state.sampler)
            q = np.asarray(p, np.float64)[G:]
            q = q / q.sum()
            curve.append({"step": done, **{k: float(v) for k, v in vals.items()},
                          "jsd64": dag_posterior.jsd(q, post),
                          "edge_error64": dag_posterior.edge_marginal_error(
                              dag_posterior.edge_marginals(adj, q),
                              dag_posterior.edge_marginals(adj, post)),
                          "loss": float(np.mean(np.asarray(m["loss"])))})
        records.append({"d": d, "method": method, "seed": int(seed), "steps": done,
                        "jsd": curve[-1]["jsd64"], "edge_error": curve[-1]["edge_error64"],
                        "jsd_float32": curve[-1]["jsd"],
                        "train_s": train_s, "compile_s": compile_s, "curve": curve})
        print(f"  d={d} {method:15s} seed {seed}: jsd {curve[-1]['jsd']:.3g}  edge err "
              f"{curve[-1]['edge_error']:.3g}  ({train_s:.1f} s)", flush=True)
    return records, cfg


LARGE = {  # name -> settings of gfnem train dag for --large (no exact posterior)
    "tb_off": {"loss": "tb", "epsilon": 0.1},
    "mdb": {"loss": "db", "flow": "stop", "epsilon": 0.1},
}


def run_large(d: int, method: str, seed: int, steps: int, evals: int, common: dict,
              edges_per_node: float, max_edges_per_node: float, n_eval: int):
    """Train ``method`` at d nodes (sampled evaluation: ``experiments.dag.sampled_experiment``):
    the true graph is Erdos-Renyi with ``edges_per_node`` * d expected edges, the sampler limited
    to ``max_edges_per_node`` * d edges; returns one record with the curve."""
    import jax

    from gfnem_jax.experiments import dag

    m = d * (d - 1) / 2
    s = dag.Settings(num_nodes=d, steps=steps, edge_prob=min(1.0, edges_per_node * d / m),
                     max_edges=min(int(m), int(round(max_edges_per_node * d))),
                     n_eval_samples=n_eval, seed=seed, **common, **LARGE[method])
    s.validate()
    exp = dag.sampled_experiment(s)
    _, true = dag.observations(s.env())
    every = max(1, steps // evals)
    chunk = exp.make_chunk(every)
    state = exp.state
    t0 = time.perf_counter()
    jax.block_until_ready(chunk(state, None))  # compilation (its result is dropped)
    compile_s = time.perf_counter() - t0
    curve, train_s, done = [], 0.0, 0
    while done < steps:
        t0 = time.perf_counter()
        state, mets = chunk(state, None)
        jax.block_until_ready(state)
        train_s += time.perf_counter() - t0
        done += every
        row = exp.evaluate(state)
        row.update(step=done, train_s=train_s, loss=float(np.mean(np.asarray(mets["loss"]))))
        if "log_z" in mets:
            row["log_z"] = float(np.asarray(mets["log_z"])[-1])
        curve.append(row)
        print(f"  d={d} {method} step {done}: auroc {row.get('auroc', float('nan')):.3f}  "
              f"E[SHD] {row['expected_shd']:.1f}  edges {row['mean_edges']:.1f} (true "
              f"{int(true.sum())})  {row['samples_per_s']:.0f} samples/s  "
              f"{done / train_s:.1f} it/s", flush=True)
    last = curve[-1]
    return {"d": d, "method": method, "seed": seed, "steps": done, "true_edges": int(true.sum()),
            "edge_prob": s.edge_prob, "max_edges": s.max_edges, "auroc": last.get("auroc"),
            "expected_shd": last["expected_shd"], "mean_edges": last["mean_edges"],
            "samples_per_s": last["samples_per_s"], "its_per_s": done / train_s,
            "train_s": train_s, "compile_s": compile_s, "curve": curve}, s.to_config()


def large_table(records) -> str:
    lines = ["| d | method | true edges | max edges | steps | AUROC | E[SHD] | edges sampled "
             "| samples/s | train it/s | train s |", "|---|" + "---|" * 10]
    for r in records:
        lines.append(f"| {r['d']} | {r['method']} | {r['true_edges']} | {r['max_edges']} | "
                     f"{r['steps']} | {r['auroc']:.3f} | {r['expected_shd']:.1f} | "
                     f"{r['mean_edges']:.1f} | {r['samples_per_s']:.0f} | {r['its_per_s']:.1f} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def table(records, methods, ds) -> str:
    lines = ["| method | " + " | ".join(f"d={d} JSD (ours, mean ± sd)" for d in ds)
             + " | " + " | ".join(f"d={d} published" for d in ds) + " |",
             "|---|" + "---|" * (2 * len(ds))]
    for m in methods:
        ours = []
        for d in ds:
            v = [r["jsd"] for r in records if r["method"] == m and r["d"] == d]
            ours.append(f"{np.mean(v):.2g} ± {np.std(v):.1g}" if v else "-")
        pub = [f"{PUBLISHED[m][d]:.2g}" if m in PUBLISHED else "-" for d in ds]
        lines.append(f"| {m} | " + " | ".join(ours) + " | " + " | ".join(pub) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--methods", nargs="+", default=["tb_off", "tb_on", "reverse_kl", "mdb"],
                    choices=sorted(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--evals", type=int, default=5, help="evaluations per run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-logz", type=float, default=0.3)
    ap.add_argument("--lr-drop", type=float, default=0.1,
                    help="multiply both learning rates by this after --lr-drop-at of the steps")
    ap.add_argument("--lr-drop-at", type=float, default=0.75)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "dag_cpu.json"))
    ap.add_argument("--large", action="store_true",
                    help="graphs beyond enumeration (e.g. --d 10 20 50): edge-marginal AUROC, "
                         "expected SHD against the true graph, samples/s; one seed (--seed)")
    ap.add_argument("--seed", type=int, default=0, help="--large: the training seed")
    ap.add_argument("--edges-per-node", type=float, default=1.0,
                    help="--large: expected edges of the true graph per node (ER1)")
    ap.add_argument("--max-edges-per-node", type=float, default=2.0,
                    help="--large: the sampler's edge limit per node (max_edges = this * d)")
    ap.add_argument("--n-eval", type=int, default=1000, help="--large: graphs sampled per evaluation")
    a = ap.parse_args(argv)
    from _machine import cpu_name
    import jax
    common = {"batch_size": a.batch_size, "hidden": a.hidden, "lr": a.lr, "lr_logz": a.lr_logz,
              "lr_drop": a.lr_drop, "lr_drop_at": a.lr_drop_at}
    records, configs = [], {}
    t0 = time.time()
    if a.large:
        for d in a.d:
            for m in a.methods:
                if m not in LARGE:
                    raise SystemExit(f"--large runs {sorted(LARGE)}, not {m}")
                rec, cfg = run_large(d, m, a.seed, a.steps, a.evals, common, a.edges_per_node,
                                     a.max_edges_per_node, a.n_eval)
                records.append(rec)
                configs[f"{d}/{m}"] = cfg
        md = large_table(records)
        print(md)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"machine": cpu_name(), "jax": jax.__version__,
                       "backend": jax.default_backend(),
                       "argv": sys.argv[1:] if argv is None else list(argv),
                       "wall_s": time.time() - t0, "load_avg_at_end": os.getloadavg(),
                       "table": md, "configs": configs, "runs": records}, f, indent=1,
                      default=str)
        print(f"wrote {a.out}")
        return
    for d in a.d:
        for m in a.methods:
            recs, cfg = run_method(d, m, range(a.seeds), a.steps, a.evals, common)
            records += recs
            configs[f"{d}/{m}"] = cfg
    md = table(records, a.methods, a.d)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"machine": cpu_name(), "jax": jax.__version__, "backend": jax.default_backend(),
                   "argv": sys.argv[1:] if argv is None else list(argv),
                   "wall_s": time.time() - t0, "published": PUBLISHED, "table": md,
                   "configs": configs, "runs": records}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
