"""The speed race: gfnem_jax against torchgfn and gfnx, side by side in one run on one machine.

Creates once (cached in --cache, default ~/.cache/gfnem_jax/race) a virtual environment per peer
from the package registry: torchgfn 2.4.1 with torch 2.13.0, and gfnx 0.0.1 on the same JAX as
ours (gfnx pins numpy 1.26.4, which JAX 0.10 cannot use, so gfnx goes in with --no-deps and its
dependencies are listed here). Then, for HyperGrids 2x8 and 4x8 (and 4x16 without --quick, where
padding dominates; --grids NDIMxHEIGHT ...) at batch 16, 256 and 1024:

  * torchgfn: the equivalent of its hypergrid tutorial on its public API (separate P_F / P_B
    MLPs, a replay buffer of 1000 whose samples are trained on, Adam lr 1e-3, log Z lr 0.1, TB);
  * gfnx: its TB hypergrid baseline on its public API (one MLP shared by P_F and P_B, on-policy);
  * ours (``runner.run``, what ``gfnem train hypergrid`` does) at each peer's settings,

all with MLPs of 2 hidden layers of 256 (3 Linear layers: each library's default), R0 = 0.1,
R1 = 0.5, R2 = 2. Runs alternate ours / peer / ours / peer so that machine load hits both alike;
each is its own process, whose peak RSS the parent reads (``os.wait4``).

Measured per run: iterations/s in steady state (first step and evaluations excluded), the time
from launch to the first finished step (imports + compilation), and the time from launch to an
exact L1 < 0.05 (evaluation time excluded). Every library is scored by the same exact dynamic
programme on the grid: peers export P_F(a | x) at every grid point at each evaluation, and

    P(0) = 1,  P(x + e_i) += P(x) P_F(+e_i | x),  P_T(x) = P(x) P_F(stop | x),
    L1 = sum_x |P_T(x) - R(x) / Z|

(no sampling, so no sampling floor); ours reports the same L1 from ``gfnem_jax.metrics``.

    python benchmarks/race.py --quick --out bench_out/race    # < 15 min on 2 CPU cores, installs included
    python benchmarks/race.py --out bench_out/race            # longer runs, two repeats
    python benchmarks/race.py --losses --out bench_out/losses # TB / DB / SubTB / log-variance vs torchgfn
    python benchmarks/race.py --soft-dqn --quick --out bench_out/race_sdqn  # soft_q vs gfnx's soft DQN
    python benchmarks/race.py --dag --quick --out bench_out/race_dag  # modified DB vs gfnx's mdb_dag baseline (~16 min)
    python benchmarks/race.py --device gpu ...                # CUDA torch and jax[cuda12] for the peers

Writes OUT/race.json (a list of rows: peer, config, ours_its, peer_its, ratio, ours_l1, peer_l1,
time-to-L1, peak RSS, time-to-first-step cold / warm), OUT/race_meta.json and OUT/race.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from _machine import cpu_name, matmul_peak  # noqa: E402 (benchmarks/ is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "race_peers")
L1_TARGET = 0.05
TORCH = "2.13.0"
TORCHGFN = "2.4.1"
GFNX = "0.0.1"
GFNX_DEPS = ["equinox", "optax", "chex", "flashbax", "jax-tqdm", "jaxtyping", "networkx",
             "omegaconf", "matplotlib"]


# ----------------------------------------------------------------------------- environments

def _venv_python(path):
    return os.path.join(path, "bin", "python")


def _pip(py, *pkgs, no_deps=False):
    cmd = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    cmd += ["--no-deps"] if no_deps else []
    subprocess.run(cmd + list(pkgs), check=True, stdout=subprocess.DEVNULL)


def ensure_env(cache: str, peer: str, device: str) -> str:
    """The python of PEER's side environment under CACHE, created on first use."""
    import jax
    path = os.path.join(cache, f"{peer}-{device}")
    py = _venv_python(path)
    if os.path.isfile(os.path.join(path, "READY")):
        return py
    t0 = time.time()
    print(f"# creating the {peer} environment in {path} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", path], check=True)
    if peer == "torchgfn":
        _pip(py, f"torch=={TORCH}", f"torchgfn=={TORCHGFN}")
    elif peer == "gfnx":
        jx = jax.__version__
        _pip(py, f"jax[cuda12]=={jx}" if device == "gpu" else f"jax=={jx}", *GFNX_DEPS)
        _pip(py, f"gfnx=={GFNX}", no_deps=True)
    else:
        raise ValueError(f"peer must be torchgfn or gfnx, got {peer!r}")
    with open(os.path.join(path, "READY"), "w") as f:
        f.write(f"{time.time() - t0:.1f} s\n")
    print(f"# {peer} environment ready in {time.time() - t0:.0f} s", flush=True)
    return py


# ----------------------------------------------------------------------------- exact scoring

def hypergrid_target(ndim, height, r0=0.1, r1=0.5, r2=2.0) -> np.ndarray:
    """R(x)/Z on the grid, shape [H]*d (the reward of gfnem_jax.envs.hypergrid.HyperGrid)."""
    g = np.stack(np.meshgrid(*[np.arange(height)] * ndim, indexing="ij"), -1)
    ax = np.abs(g / (height - 1) - 0.5)
    r = r0 + r1 * np.all(ax > 0.25, -1) + r2 * np.all((ax > 0.3) & (ax < 0.4), -1)
    return r / r.sum()


def terminal_distribution(pf: np.ndarray, ndim: int, height: int) -> np.ndarray:
    """Exact terminal distribution [H]*d of a forward policy pf[H^d, d+1] (row-major grid points;
    columns +e_0 .. +e_{d-1}, stop): P(x + e_i) += P(x) pf(+e_i | x) over d*(H-1) sweeps."""
    pf = np.asarray(pf, np.float64).reshape((height,) * ndim + (ndim + 1,))
    e0 = np.zeros((height,) * ndim)
    e0[(0,) * ndim] = 1.0
    P = e0
    for _ in range(ndim * (height - 1)):
        new = e0.copy()
        for i in range(ndim):
            flow = P * pf[..., i]
            src = [slice(None)] * ndim
            dst = [slice(None)] * ndim
            src[i], dst[i] = slice(0, height - 1), slice(1, height)
            new[tuple(dst)] += flow[tuple(src)]
        P = new
    return P * pf[..., ndim]


def score_tables(npz_path, ndim, height, r0) -> tuple:
    """(exact L1 per evaluation, exact mean number of states per trajectory per evaluation) of
    the P_F tables a peer exported: a trajectory to x visits sum(x) + 2 states (s_0, one per
    increment, and x again after the stop)."""
    target = hypergrid_target(ndim, height, r0)
    visits = np.indices((height,) * ndim).sum(0) + 2.0
    l1s, states = [], []
    with np.load(npz_path) as z:
        for k in sorted(z.files, key=lambda s: int(s.split("_")[1])):
            P = terminal_distribution(z[k], ndim, height)
            l1s.append(float(np.abs(P - target).sum()))
            states.append(float((P * visits).sum() / P.sum()))
    return l1s, states


def mlp_flops(sizes) -> int:
    """FLOPs of one forward pass of one input through dense layers of these widths
    (2 per multiply-add)."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def state_flops(lib, ndim, height, hidden=256, n_hidden=2, shared=False) -> int:
    """FLOPs of one forward pass of one HyperGrid state through LIB's network at the race's
    settings (K-hot input of ndim * height, ``n_hidden`` hidden layers of ``hidden``): ours (a
    P_F torso and head; P_B and flow heads on the same torso when ``shared``, else on a second
    one: ``MLPPolicy.flops``), torchgfn (separate P_F and P_B MLPs), gfnx (one MLP, P_F and P_B
    heads)."""
    torso = mlp_flops([ndim * height] + [hidden] * n_hidden)
    heads = [ndim + 1, ndim] + ([1] if lib == "ours" else [])
    n_torsos = 1 if (lib == "gfnx" or (lib == "ours" and shared)) else 2
    return n_torsos * torso + sum(2 * hidden * h for h in heads)


# ----------------------------------------------------------------------------- running

def launch(py, script, flags, env_extra=None, pythonpath=None):
    """Run one worker; returns its JSON plus peak_rss_mib and wall_s (parent-measured)."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="race_")
    os.close(fd)
    env = dict(os.environ, **(env_extra or {}))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.time()
    env["RACE_T0"] = repr(t0)
    proc = subprocess.Popen([py, os.path.join(PEERS_DIR, script), *flags, "--out", out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # read output while waiting, then reap with wait4 for this child's own rusage
    log = proc.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(flags)} failed ({proc.returncode}):\n{log[-3000:]}")
    with open(out) as f:
        res = json.load(f)
    res["peak_rss_mib"] = round(ru.ru_maxrss / 1024, 1)
    res["wall_s"] = round(wall, 2)
    if os.path.isfile(out + ".npz"):
        res["npz"] = out + ".npz"
    os.remove(out)
    return res


def time_to_l1(res):
    for ev, l1 in zip(res["evals"], res["l1"]):
        if l1 is not None and l1 < L1_TARGET:
            return ev["t_s"]
    return None


def train_time_to_l1(res):
    """Seconds from the run's first update to L1 < target: the training alone, start-up excluded."""
    t = time_to_l1(res)
    return None if t is None else round(t - res["t_first_step_s"], 3)


def worker_flags(ndim, batch, steps, eval_every, max_s, peer, device, loss="tb", replay=None,
                 height=8):
    shared = peer == "gfnx"
    fl = ["--ndim", str(ndim), "--height", str(height), "--batch", str(batch), "--steps", str(steps),
          "--eval-every", str(eval_every), "--max-seconds", str(max_s), "--r0", "0.1",
          "--lr", "1e-3", "--lr-logz", "0.1", "--hidden", "256", "--n-hidden", "2",
          "--loss", loss, "--device", device]
    if shared:
        fl.append("--shared")
    return fl


PLANS = {  # (steps, eval_every, peer max seconds) by batch size
    "quick": {16: (2000, 100, 30.0), 256: (200, 25, 15.0), 1024: (30, 10, 10.0)},
    "full": {16: (5000, 100, 120.0), 256: (1000, 50, 120.0), 1024: (300, 20, 120.0)},
}


def flops_columns(res, lib, ndim, height, batch, shared, peak):
    """The honest floor of one run: the FLOPs its real states need per iteration (one forward
    and one backward pass, 3x a forward, over the mean number of states its trajectories visit,
    exact from its policy at each evaluation), the GFLOP/s that makes at its iterations/s, and
    that rate's fraction of the machine's measured matmul peak."""
    states = [s for s in res.get("states") or [] if s is not None]
    if not states:
        return {}
    per_it = 3 * batch * float(np.mean(states)) * state_flops(lib, ndim, height, shared=shared)
    gflops = per_it * res["its"] / 1e9
    return {"states_per_traj": round(float(np.mean(states)), 2),
            "gflop_per_it": round(per_it / 1e9, 4), "gflops": round(gflops, 2),
            "peak_frac": round(gflops / peak, 4) if peak else None}


def race_config(peer, peer_py, ndim, batch, plan, repeats, args, cache_root, loss="tb",
                height=8):
    """Alternate ours / peer `repeats` times at PEER's settings; one summary row."""
    steps, every, max_s = plan[batch]
    fl = worker_flags(ndim, batch, steps, every, max_s, peer, args.device, loss, height=height)
    cfg = f"{ndim}d-h{height}-b{batch}-{loss}"
    cache_dir = tempfile.mkdtemp(prefix="jaxcache_", dir=cache_root)  # cold for this config
    peer_extra = ["--replay", "1000"] if (peer == "torchgfn" and not args.losses) else []
    if peer == "torchgfn":
        peer_extra += ["--threads", str(args.torch_threads)]
    if args.one_pass_from and batch >= args.one_pass_from:
        fl_ours = fl + ["--one-pass"]
    else:
        fl_ours = fl
    ours_runs, peer_runs = [], []
    for rep in range(repeats):
        o = launch(sys.executable, "ours_hypergrid.py", fl_ours + ["--compile-cache", cache_dir],
                   pythonpath=args.pythonpath)
        ours_runs.append(o)
        print(f"  ours     {cfg:16s} rep {rep}: {o['its']:8.1f} it/s  l1 {o['l1'][-1]:.4f}  "
              f"first step {o['t_first_step_s']:.1f} s  rss {o['peak_rss_mib']:.0f} MiB", flush=True)
        p = launch(peer_py, f"{peer}_hypergrid.py", fl + peer_extra)
        p["l1"], p["states"] = score_tables(p.pop("npz"), ndim, height, 0.1)
        peer_runs.append(p)
        print(f"  {peer:8s} {cfg:16s} rep {rep}: {p['its']:8.1f} it/s  l1 {p['l1'][-1]:.4f}  "
              f"first step {p['t_first_step_s']:.1f} s  rss {p['peak_rss_mib']:.0f} MiB "
              f"({p['steps'] + 1} steps)", flush=True)
    if repeats == 1:
        # a warm start: the same run again, its programs now in the persistent compilation cache
        # (on by default for `gfnem train`), as every run after a user's first one starts
        warm = launch(sys.executable, "ours_hypergrid.py", fl_ours + ["--compile-cache", cache_dir],
                      pythonpath=args.pythonpath)
    else:
        warm = ours_runs[1] if repeats > 1 else None
    ours_warm = warm["t_first_step_s"] if warm else None
    ours_t_warm = time_to_l1(warm) if warm else None

    def med(xs):
        xs = [x for x in xs if x is not None]
        return float(np.median(xs)) if xs else None

    o_its, p_its = med([r["its"] for r in ours_runs]), med([r["its"] for r in peer_runs])
    o_t = time_to_l1(ours_runs[0])  # cold: the later runs find the compilation cache filled
    p_t = med([time_to_l1(r) for r in peer_runs])
    o_tr, p_tr = train_time_to_l1(ours_runs[0]), med([train_time_to_l1(r) for r in peer_runs])
    row = dict(
        peer=peer, config=cfg, ours_one_pass="--one-pass" in fl_ours,
        ours_its=round(o_its, 2), peer_its=round(p_its, 2),
        ratio=round(o_its / p_its, 2),
        ours_l1=round(ours_runs[-1]["l1"][-1], 4), peer_l1=round(peer_runs[-1]["l1"][-1], 4),
        ours_steps=ours_runs[-1]["evals"][-1]["step"], peer_steps=peer_runs[-1]["steps"] + 1,
        ours_t_l1=o_t, peer_t_l1=p_t,
        t_l1_ratio=round(p_t / o_t, 2) if (o_t and p_t) else None,
        ours_t_l1_warm=ours_t_warm,
        t_l1_ratio_warm=round(p_t / ours_t_warm, 2) if (ours_t_warm and p_t) else None,
        ours_t_l1_train=o_tr, peer_t_l1_train=p_tr,
        t_l1_train_ratio=round(p_tr / o_tr, 2) if (o_tr and p_tr) else None,
        peer_t_total=round(peer_runs[-1]["evals"][-1]["t_s"], 2),
        ours_rss_mib=med([r["peak_rss_mib"] for r in ours_runs]),
        ours_rss_cold_mib=ours_runs[0]["peak_rss_mib"],
        ours_rss_warm_mib=warm["peak_rss_mib"] if warm else None,
        peer_rss_mib=med([r["peak_rss_mib"] for r in peer_runs]),
        ours_ttfs_cold=ours_runs[0]["t_first_step_s"], ours_ttfs_warm=ours_warm,
        peer_ttfs=med([r["t_first_step_s"] for r in peer_runs]),
        ours_import_s=ours_runs[0]["t_import_s"], peer_import_s=peer_runs[0]["t_import_s"],
        peer_settings=("separate P_F/P_B MLPs, replay buffer 1000" if peer_extra else
                       "separate P_F/P_B MLPs, on-policy" if peer == "torchgfn" else
                       "soft DQN: dueling MLP, Huber, stop transitions x5, uniform P_B, "
                       "target tau 0.25, on-policy" if loss == "soft_q" else
                       "one shared MLP, on-policy"),
        repeats=repeats,
        ours_flops=flops_columns(dict(ours_runs[-1], its=o_its), "ours", ndim, height, batch,
                                 peer == "gfnx", getattr(args, "peak", None)),
        peer_flops=flops_columns(dict(peer_runs[-1], its=p_its), peer, ndim, height, batch,
                                 False, getattr(args, "peak", None)),
        ours_l1_curve=[[e["step"], e["t_s"], l] for e, l in zip(ours_runs[-1]["evals"], ours_runs[-1]["l1"])],
        peer_l1_curve=[[e["step"], e["t_s"], round(l, 5)] for e, l in zip(peer_runs[-1]["evals"], peer_runs[-1]["l1"])],
    )
    return row


def race_dag(args, cache_root, repeats):
    """The DAG row: our modified DB against gfnx's mdb_dag baseline, alternating, both scored by
    our exact enumeration of the 29,281 DAGs of d = 5 (benchmarks/race_dag.py; its own plan of
    repeats: one and a warm rerun of ours with --quick, two otherwise)."""
    import race_dag as rd
    return rd.race(args, cache_root, launch, ensure_env)


def dag_markdown(rows, meta) -> str:
    import race_dag as rd
    return rd.markdown(rows, meta)


def fmt(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def markdown(rows, meta) -> str:
    load = "/".join(f"{x:.1f}" for x in list(meta.get("load_avg_at_end", []))[:1] + list(meta.get("load_avg_at_start", []))[:1])
    lines = [f"Race on {meta['machine']} ({meta['device']}); {meta['when']}; 1-min load average at "
             f"end/start {load} (the machine was shared). Ratios are ours / peer "
             f"(iterations/s) and peer / ours (time to exact L1 < {L1_TARGET}, from launch); ours cold: "
             f"an empty compilation cache, warm: the same run again with the cache filled (the "
             f"default of `gfnem train`); '—': not reached "
             f"within the run (the peer's run length is in the steps / s column); training t(L1): from each run's "
             f"first update, start-up (imports, compilation) excluded. The floor: states/traj is "
             f"the exact mean number of states a trajectory of the run's policy visits (averaged "
             f"over its evaluations); GFLOP/it what those real states need (one forward and one "
             f"backward pass through the library's own network, 3x a forward); GFLOP/s that "
             f"at the run's iterations/s, and its share of the measured matmul peak "
             f"({meta.get('matmul_peak_gflops', '?')} GFLOP/s, JAX on every core).", "",
             "| peer | config | ours it/s | peer it/s | ratio | ours L1 | peer L1 | ours t(L1<0.05) s cold / warm "
             "| peer t(L1<0.05) s | t ratio cold / warm | ours RSS MiB cold / warm | peer RSS MiB | ours 1st step cold / warm s "
             "| peer 1st step s | peer steps / s run | training t(L1<0.05) s ours / peer (ratio) "
             "| states/traj ours / peer | GFLOP/it ours / peer | GFLOP/s (% peak) ours / peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def floor(r, key):
        f = r.get(key) or {}
        return f

    def pct(f):
        return "—" if not f else f"{f['gflops']:.1f} ({100 * (f['peak_frac'] or 0):.1f}%)"

    for r in rows:
        lines.append(
            f"| {r['peer']} | {r['config']} | {r['ours_its']:.1f} | {r['peer_its']:.1f} | "
            f"**{r['ratio']:.2f}** | {r['ours_l1']:.3f} | {r['peer_l1']:.3f} | {fmt(r['ours_t_l1'])} / "
            f"{fmt(r.get('ours_t_l1_warm'))} | {fmt(r['peer_t_l1'])} | {fmt(r['t_l1_ratio'], 2)} / "
            f"{fmt(r.get('t_l1_ratio_warm'), 2)} | {fmt(r.get('ours_rss_cold_mib'), 0)} / "
            f"{fmt(r.get('ours_rss_warm_mib'), 0)} | "
            f"{r['peer_rss_mib']:.0f} | {fmt(r['ours_ttfs_cold'])} / {fmt(r['ours_ttfs_warm'])} | "
            f"{fmt(r['peer_ttfs'])} | {r['peer_steps']} / {r['peer_t_total']:.0f} | "
            f"{fmt(r.get('ours_t_l1_train'), 2)} / {fmt(r.get('peer_t_l1_train'), 2)} "
            f"({fmt(r.get('t_l1_train_ratio'), 2)}) | "
            f"{fmt(floor(r, 'ours_flops').get('states_per_traj'))} / "
            f"{fmt(floor(r, 'peer_flops').get('states_per_traj'))} | "
            f"{fmt(floor(r, 'ours_flops').get('gflop_per_it'), 3)} / "
            f"{fmt(floor(r, 'peer_flops').get('gflop_per_it'), 3)} | "
            f"{pct(floor(r, 'ours_flops'))} / {pct(floor(r, 'peer_flops'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/race")
    p.add_argument("--cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gfnem_jax", "race"))
    p.add_argument("--quick", action="store_true", help="one repeat, short runs (< 15 min)")
    p.add_argument("--losses", action="store_true",
                   help="TB / DB / SubTB / log-variance against torchgfn (2D H=8 batch 16, on-policy)")
    p.add_argument("--soft-dqn", action="store_true",
                   help="our soft_q against gfnx's soft DQN baseline (2D H=8 batch 16, on-policy, "
                        "uniform P_B, target network at Polyak rate 0.25 every step)")
    p.add_argument("--dag", action="store_true",
                   help="our modified DB against gfnx's mdb_dag baseline (d = 5, 128 environments, "
                        "the same data and BGe score): it/s and time to exact JSD < 1e-3, both "
                        "scored by our enumeration of every DAG (benchmarks/race_dag.py)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--peers", nargs="+", default=["torchgfn", "gfnx"])
    p.add_argument("--ndims", type=int, nargs="+", default=None,
                   help="HyperGrids of height 8 in these dimensions (instead of --grids)")
    p.add_argument("--grids", nargs="+", default=None,
                   help="HyperGrids as NDIMxHEIGHT (default 2x8 4x8 4x16 without --quick, 2x8 "
                        "4x8 with it; 4x16 is where padding dominates: 46 steps, a trajectory "
                        "of the target about 31)")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 256, 1024])
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads for torchgfn (0 = torch's default, all cores). 1 is "
                        "fastest for these small layers, and torch's default spin-waits badly when "
                        "the cores are shared: 1.8 it/s against 15 it/s under load 8 on 2 cores")
    p.add_argument("--one-pass-from", type=int, default=512,
                   help="our runs use one_pass (differentiate through the rollout, no second pass "
                        "over the states) at this batch size and above (0 = never): on the 2-core "
                        "CPU about 10%% more iterations/s at batch 1024 (2-D and 4-D) and slower "
                        "at batch 16 to 256 (benchmarks/results/README.md)")
    p.add_argument("--pythonpath", default=None,
                   help="PYTHONPATH for our worker (e.g. a snapshot of gfnem_jax to race)")
    args = p.parse_args(argv)
    t_start = time.time()
    load_start = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.cache, exist_ok=True)
    import jax
    if args.device == "gpu" and jax.devices()[0].platform != "gpu":
        print("# warning: --device gpu but this JAX sees no GPU (install jax[cuda12])", flush=True)
    plan = PLANS["quick" if args.quick else "full"]
    repeats = 1 if args.quick else 2
    if args.dag:
        rows = [race_dag(args, args.cache, repeats)]
        dev = jax.devices()[0]
        meta = dict(machine=f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()})",
                    device=f"{dev.platform} ({dev.device_kind})", jax=jax.__version__,
                    ours=args.pythonpath or "installed gfnem_jax", gfnx=GFNX, dag=True,
                    jraph=__import__("race_dag").JRAPH,
                    quick=args.quick, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    load_avg_at_start=load_start, load_avg_at_end=os.getloadavg(),
                    total_s=round(time.time() - t_start, 1))
        for name, obj in (("race.json", rows), ("race_meta.json", meta)):
            with open(os.path.join(args.out, name), "w") as f:
                json.dump(obj, f, indent=1)
        md = dag_markdown(rows, meta)
        with open(os.path.join(args.out, "race.md"), "w") as f:
            f.write(md)
        print("\n" + md)
        return rows
    args.peak = matmul_peak()
    print(f"# measured float32 matmul peak (JAX, every core): {args.peak:.0f} GFLOP/s", flush=True)
    peers = ["torchgfn"] if args.losses else ["gfnx"] if args.soft_dqn else args.peers
    pys = {peer: ensure_env(args.cache, peer, args.device) for peer in peers}
    t_install = time.time() - t_start
    rows = []
    if args.soft_dqn:
        rows.append(race_config("gfnx", pys["gfnx"], 2, 16, plan, repeats, args, args.cache,
                                "soft_q"))
    elif args.losses:
        for loss in ("tb", "db", "subtb", "logvar"):
            rows.append(race_config("torchgfn", pys["torchgfn"], 2, 16, plan, repeats, args,
                                    args.cache, loss))
    else:
        if args.ndims:
            grids = [(n, 8) for n in args.ndims]
        else:
            grids = [tuple(int(v) for v in g.split("x")) for g in
                     (args.grids or (["2x8", "4x8"] if args.quick else ["2x8", "4x8", "4x16"]))]
        for ndim, height in grids:
            for batch in args.batches:
                for peer in peers:
                    rows.append(race_config(peer, pys[peer], ndim, batch, plan, repeats, args,
                                            args.cache, height=height))
    dev = jax.devices()[0]
    meta = dict(machine=f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()})",
                device=f"{dev.platform} ({dev.device_kind})", jax=jax.__version__,
                ours=args.pythonpath or "installed gfnem_jax", torch_threads=args.torch_threads,
                torch=TORCH, torchgfn=TORCHGFN, gfnx=GFNX, quick=args.quick, losses=args.losses,
                soft_dqn=args.soft_dqn,
                when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load_avg_at_start=load_start, load_avg_at_end=os.getloadavg(), install_s=round(t_install, 1),
                total_s=round(time.time() - t_start, 1), plan={str(k): v for k, v in plan.items()},
                matmul_peak_gflops=round(args.peak, 1),
                settings="HyperGrid (height in each config), R0=0.1 R1=0.5 R2=2, MLPs of 2 hidden layers x 256, "
                         "Adam lr 1e-3, log Z lr 0.1, seed 0")
    with open(os.path.join(args.out, "race.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "race_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    md = markdown(rows, meta)
    with open(os.path.join(args.out, "race.md"), "w") as f:
        f.write(md)
    print("\n" + md)
    print(f"wrote {args.out}/race.json, race.md ({meta['total_s']:.0f} s, installs {t_install:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
