"""The DAG row of the speed race (``python benchmarks/race.py --dag``): our modified DB against
gfnx's modified-DB baseline (its ``baselines/mdb_dag.py`` at ``configs/mdb_dag.yaml``), both on
d = 5 with 128 parallel environments, the same 100 observations and BGe score, and both scored by
OUR exact enumeration of the 29,281 DAGs of d = 5.

  * ours (``race_peers/ours_dag.py``): ``gfnem train dag --loss db --flow stop``; it writes the
    data it scored, every DAG in our order, their log scores and the exact posterior;
  * gfnx (``race_peers/gfnx_dag.py``, in the race's gfnx environment plus jraph, gfnx's
    ``baselines`` extra for its graph network): gfnx's baseline at its configuration on those
    same observations (gfnx's own BGeScore of them, alpha_mu 1, alpha_w d + 2, uniform prior);
    at each evaluation it exports P_F(a | G) on every DAG, and gfnx's log reward of every DAG once.

The peer's exact terminal distribution is the dynamic programme ``dag_terminal_distribution``
below (no sampling, float64), its JSD taken against our exact posterior (``jsd``) and against the
posterior of gfnx's own log rewards (``jsd_own``); the row also reports how far gfnx's log reward
is from ours up to a constant (``reward_spread``: max - min of their difference over the DAGs; a
constant difference leaves the posterior unchanged). Runs alternate ours / gfnx; peak RSS is the
parent's ``os.wait4`` of each worker.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from gfnem_jax.dag.posterior import jsd

JSD_TARGET = 1e-3
JRAPH = "0.0.6.dev0"
PLANS = {  # (steps, eval_every, max training seconds) of ours / of gfnx, repeats
    "quick": dict(ours=(20000, 500, 240.0), gfnx=(100_000, 100, 240.0), repeats=1),
    "full": dict(ours=(20000, 500, 150.0), gfnx=(100_000, 250, 600.0), repeats=2),
}
OURS_SETTINGS = ("gfnem train dag --loss db --flow stop: MLP 2 x 128, uniform P_B, eps 0.1, "
                 "Adam 1e-3, batch 128, no target network")
GFNX_SETTINGS = ("gfnx mdb_dag.yaml: jraph GNN (emb 128, 1 graph-network round, 4-head "
                 "attention), uniform P_B, Huber MDB, target copied every 1000 updates, eps 1.0 -> "
                 "0.1 over 50,000 updates, Adam 1e-4, batch 128, seed 111")


def ensure_jraph(py: str) -> None:
    """Install jraph (gfnx's ``baselines`` extra; needs only jax and numpy, present) into the
    gfnx environment of python ``py`` when it is missing."""
    if subprocess.run([py, "-c", "import jraph"], capture_output=True).returncode == 0:
        return
    print(f"# installing jraph=={JRAPH} into the gfnx environment", flush=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    f"jraph=={JRAPH}"], check=True, stdout=subprocess.DEVNULL)


def dag_terminal_distribution(pf: np.ndarray, adj: np.ndarray):
    """(P_T float64[G], illegal mass float): the exact terminal distribution of a forward policy
    pf[G, d^2 + 1] given on every DAG adj bool[G, d, d] (columns: edge i -> j at i d + j, stop):

        P(empty) = 1,  P(G + i->j) += P(G) pf[G, i d + j]  (over G by edge count),
        P_T(G) = P(G) pf[G, stop].

    An edge is legal iff it is absent and the graph with it is among ``adj`` (i.e. acyclic); the
    illegal mass is the largest total pf of one DAG's illegal edges (a policy's leak: 0 if masked).
    """
    adj = np.asarray(adj, bool)
    pf = np.asarray(pf, np.float64)
    G, d, _ = adj.shape
    flat = adj.reshape(G, d * d)
    codes = (flat.astype(np.int64) << np.arange(d * d)).sum(1)
    order = np.argsort(codes)
    sorted_codes = codes[order]
    kid_code = codes[:, None] | (np.int64(1) << np.arange(d * d))[None, :]
    pos = np.clip(np.searchsorted(sorted_codes, kid_code), 0, G - 1)
    legal = ~flat & (sorted_codes[pos] == kid_code)
    kid = order[pos]
    n_edges = flat.sum(1)
    P = (codes == 0).astype(np.float64)
    for k in range(int(n_edges.max()) + 1):
        src = np.flatnonzero(n_edges == k)
        g, a = np.nonzero(legal[src])
        np.add.at(P, kid[src[g], a], P[src[g]] * pf[src[g], a])
    leak = float(np.max(np.where(legal, 0.0, pf[:, :-1]).sum(1)))
    return P * pf[:, -1], leak


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def first_below(curve):
    """t_s of the first [step, t_s, jsd] with jsd < JSD_TARGET, or None."""
    return next((t for _, t, j in curve if j is not None and j < JSD_TARGET), None)


def run_ours(launch, args, plan, cache_dir):
    steps, every, max_s = plan["ours"]
    fl = ["--d", "5", "--batch", "128", "--steps", str(steps), "--eval-every", str(every),
          "--max-seconds", str(max_s), "--device", args.device, "--compile-cache", cache_dir]
    o = launch(sys.executable, "ours_dag.py", fl, pythonpath=args.pythonpath)
    path = o.pop("npz")
    with np.load(path) as z:
        inputs = {k: z[k] for k in z.files}
    os.remove(path)
    o["curve"] = [[e["step"], e["t_s"], j] for e, j in zip(o["evals"], o["jsd"])]
    return o, inputs


def run_gfnx(launch, py, args, plan, inputs, work):
    """One gfnx run on ``inputs`` (ours' data and DAGs), scored here; its tables are removed."""
    steps, every, max_s = plan["gfnx"]
    data, dags = os.path.join(work, "data.npy"), os.path.join(work, "dags.npy")
    np.save(data, inputs["data"])
    np.save(dags, inputs["adjacency"].astype(np.uint8))
    tables = tempfile.mkdtemp(prefix="tables_", dir=work)
    fl = ["--data", data, "--dags", dags, "--tables", tables, "--batch", "128", "--steps",
          str(steps), "--eval-every", str(every), "--max-seconds", str(max_s), "--device",
          args.device]
    r = launch(py, "gfnx_dag.py", fl)
    adj, post = inputs["adjacency"], inputs["posterior"]
    lr = np.load(os.path.join(tables, "log_reward.npy")).astype(np.float64)
    diff = inputs["log_score"] - lr
    own = _softmax(lr)
    r["reward_spread"] = float(diff.max() - diff.min())
    r["jsd_targets"] = jsd(own, post)
    r["jsd"], r["jsd_own"], leaks = [], [], []
    for k in range(len(r["evals"])):
        pt, leak = dag_terminal_distribution(np.load(os.path.join(tables, f"pf_{k}.npy")), adj)
        leaks.append(leak)
        r.setdefault("mass", []).append(float(pt.sum()))
        pt = pt / pt.sum()
        r["jsd"].append(jsd(pt, post))
        r["jsd_own"].append(jsd(pt, own))
    r["illegal_mass"] = max(leaks) if leaks else None
    shutil.rmtree(tables)
    r["curve"] = [[e["step"], e["t_s"], j] for e, j in zip(r["evals"], r["jsd"])]
    return r


def race(args, cache_root, launch, ensure_env):
    """Alternate ours / gfnx (``PLANS``: quick with args.quick); one summary row (a dict)."""
    plan = PLANS["quick" if args.quick else "full"]
    py = ensure_env(cache_root, "gfnx", args.device)
    ensure_jraph(py)
    cache_dir = tempfile.mkdtemp(prefix="jaxcache_", dir=cache_root)  # cold for our first run
    work = tempfile.mkdtemp(prefix="race_dag_")
    ours, peer = [], []
    try:
        for rep in range(plan["repeats"] + (1 if plan["repeats"] == 1 else 0)):
            o, inputs = run_ours(launch, args, plan, cache_dir)
            o["t_jsd"] = first_below(o["curve"])
            ours.append(o)
            _say("ours", rep, o)
            if rep >= plan["repeats"]:
                break  # the warm rerun of ours (one-repeat plan)
            p = run_gfnx(launch, py, args, plan, inputs, work)
            p["t_jsd"] = first_below(p["curve"])
            peer.append(p)
            _say("gfnx", rep, p)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return float(np.median(xs)) if xs else None

    def train_t(r):
        return None if r["t_jsd"] is None else round(r["t_jsd"] - r["t_first_step_s"], 2)

    o, p = ours[0], peer[-1]
    o_its, p_its = med([r["its"] for r in ours[: len(peer)]]), med([r["its"] for r in peer])
    p_t = med([r["t_jsd"] for r in peer])
    return dict(
        peer="gfnx", config="dag-d5-b128-mdb",
        ours_its=round(o_its, 2), peer_its=round(p_its, 3), ratio=round(o_its / p_its, 1),
        ours_jsd=o["jsd"][-1], peer_jsd=p["jsd"][-1], peer_jsd_own=p["jsd_own"][-1],
        ours_steps=o["steps"], peer_steps=p["steps"] + 1,
        ours_t_jsd_cold=o["t_jsd"], ours_t_jsd_warm=ours[1]["t_jsd"] if len(ours) > 1 else None,
        peer_t_jsd=p_t, t_jsd_ratio=round(p_t / o["t_jsd"], 2) if (p_t and o["t_jsd"]) else None,
        ours_t_jsd_train=train_t(o), peer_t_jsd_train=med([train_t(r) for r in peer]),
        ours_ttfs_cold=o["t_first_step_s"],
        ours_ttfs_warm=ours[1]["t_first_step_s"] if len(ours) > 1 else None,
        peer_ttfs=med([r["t_first_step_s"] for r in peer]),
        ours_import_s=o["t_import_s"], peer_import_s=p["t_import_s"],
        ours_rss_mib=med([r["peak_rss_mib"] for r in ours]),
        peer_rss_mib=med([r["peak_rss_mib"] for r in peer]),
        ours_jsd_at_peer_end=_at_time(o["curve"], p["curve"][-1][1]),
        peer_train_s=p["train_s"], peer_eps_final=p["eps_final"],
        reward_spread=p["reward_spread"], jsd_targets=p["jsd_targets"],
        peer_illegal_mass=p["illegal_mass"], peer_mass=p["mass"][-1],
        repeats=plan["repeats"], plan={k: v for k, v in plan.items() if k != "repeats"},
        ours_settings=OURS_SETTINGS, peer_settings=GFNX_SETTINGS,
        ours_jsd_curve=o["curve"], peer_jsd_curve=p["curve"],
        peer_jsd_own_curve=[[c[0], c[1], j] for c, j in zip(p["curve"], p["jsd_own"])])


def _at_time(curve, t):
    """The JSD of the last [step, t_s, jsd] of ``curve`` at or before t_s = t (None: none yet)."""
    before = [j for _, ts, j in curve if ts <= t]
    return before[-1] if before else None


def _say(who, rep, r):
    t = r["t_jsd"]
    print(f"  {who:8s} dag-d5-b128-mdb rep {rep}: {r['its']:8.2f} it/s  jsd {r['jsd'][-1]:.2e} "
          f"({r['steps']} steps)  t(jsd<{JSD_TARGET:g}) {'—' if t is None else f'{t:.1f}'} s  "
          f"first step {r['t_first_step_s']:.1f} s  rss {r['peak_rss_mib']:.0f} MiB", flush=True)


def markdown(rows, meta) -> str:
    def f(x, nd=1):
        return "—" if x is None else f"{x:.{nd}f}"

    def e(x):
        return "—" if x is None else f"{x:.2e}"

    lines = [f"DAG race on {meta['machine']} ({meta['device']}); {meta['when']}; 1-min load "
             f"average at start / end {meta['load_avg_at_start'][0]:.1f} / "
             f"{meta['load_avg_at_end'][0]:.1f} (shared). JSD: exact, both samplers scored by our "
             f"enumeration of the 29,281 DAGs of d = 5 against our exact posterior; t(JSD < "
             f"{JSD_TARGET:g}) from launch (ours cold: empty compilation cache; warm: filled), "
             f"evaluation excluded; '—': not reached in the run. Ratio: ours / gfnx iterations/s.",
             "",
             "| peer | config | ours it/s | gfnx it/s | ratio | ours JSD (updates) | gfnx JSD "
             "(updates) | ours t(JSD<1e-3) s cold / warm | gfnx t(JSD<1e-3) s | ours 1st step s "
             "cold / warm | gfnx 1st step s | ours RSS MiB | gfnx RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['peer']} | {r['config']} | {r['ours_its']:.1f} | {r['peer_its']:.2f} | "
            f"**{r['ratio']:.0f}** | {r['ours_jsd']:.2e} ({r['ours_steps']}) | "
            f"{r['peer_jsd']:.2e} ({r['peer_steps']}) | {f(r['ours_t_jsd_cold'])} / "
            f"{f(r['ours_t_jsd_warm'])} | {f(r['peer_t_jsd'])} | {f(r['ours_ttfs_cold'])} / "
            f"{f(r['ours_ttfs_warm'])} | {f(r['peer_ttfs'])} | {r['ours_rss_mib']:.0f} | "
            f"{r['peer_rss_mib']:.0f} |")
    for r in rows:
        lines += ["", f"Same target: gfnx's float32 BGe log reward of our data differs from our "
                  f"float64 log score by a constant up to {r['reward_spread']:.1e} nats (max - min "
                  f"over the DAGs); JSD between the two exact posteriors {r['jsd_targets']:.1e}; "
                  f"gfnx's last JSD to its own posterior {r['peer_jsd_own']:.2e}. gfnx trained "
                  f"{r['peer_train_s']:.0f} s ({r['peer_steps']} updates, eps at the end "
                  f"{r['peer_eps_final']:.3f} of its 1.0 -> 0.1 schedule); at that time from "
                  f"launch ({r['peer_jsd_curve'][-1][1]:.0f} s) ours was at JSD "
                  f"{e(r['ours_jsd_at_peer_end'])}. gfnx's P_F puts "
                  f"{r['peer_illegal_mass']:.1e} mass on illegal edges.",
                  "", f"ours: {r['ours_settings']}. gfnx: {r['peer_settings']}."]
    return "\n".join(lines) + "\n"
