"""Peak resident memory of training runs, as a user's process sees it.

    python benchmarks/peak_rss.py NDIM BATCH      # e.g. 2 16: one HyperGrid runner.run in this
                                                  # process; prints its ru_maxrss in MiB
    python benchmarks/peak_rss.py --all --out benchmarks/results/peak_rss_cpu.json [--only KIND ...]

``NDIM BATCH``: 200 steps, H = 8, 3x256 MLPs, no persistent compilation cache (so the chunk is
compiled here).

``--all``: every run kind at its README (or default) settings with a short ``--steps``, each as
its own ``gfnem train`` child process (no compilation cache, ``--quiet``, a fresh temporary
``--out``, final evaluation and plots included); the child's peak RSS is its own ``ru_maxrss``
from ``os.wait4`` (the child alone, not the other runs), and the child's own pre-work size
estimate (``gfnem_jax.sizes``) is recorded beside it. Rows above 2 GiB are marked.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _machine import cpu_name  # noqa: E402 (benchmarks/ is on sys.path)

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["GFNEM_NO_COMPILE_CACHE"] = "1"

# name -> flags of `gfnem train` (the README's command, or the defaults, with a short --steps)
RUNS = {
    "hypergrid": "hypergrid --ndim 2 --height 8 --r0 0.001 --loss tb --batch-size 64 --seed 0 "
                 "--steps 300 --log-every 100",
    "sets": "sets --loss reverse_kl --baseline loo --steps 300 --log-every 100",
    "sequences": "sequences --loss renyi --alpha 0.5 --steps 300 --log-every 100",
    "mixture": "mixture --seed 0 --steps 1000 --log-every 500",
    "grammar-marginal": "grammar --steps 40 --log-every 20",
    "grammar-gflownet": "grammar --method gflownet --max-len 10 --nt 10 --pt 20 --dim 64 "
                        "--policy-layers 2 --policy-dim 64 --policy-enc-layers 1 --schedule fixed "
                        "--e-steps 2 --steps 40 --log-every 20",
    "dvae": "dvae --method gflownet --codes 8 --data digits --steps 200 --log-every 100",
    "ebm-gfn-cd": "ebm --data 2spirals --bits 4 --steps 200 --energy-hidden 64 --gfn-hidden 64 "
                  "--log-every 100",
    "ebm-gfn-cd-default": "ebm --steps 100 --log-every 50",
    "ebm-pcd": "ebm --method pcd --data moons --steps 200 --log-every 100",
}
LIMIT_MIB = 2048


def measure(name: str, flags: str) -> dict:
    """Run ``gfnem train FLAGS`` in a child process; its peak RSS (MiB) and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gfnem_jax.cli", "train", *flags.split(),
               "--out", os.path.join(tmp, "run"), "--quiet", "--no-compile-cache"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read()
        wall = time.time() - t0
    row = {"run": name, "command": "gfnem train " + flags, "peak_rss_mib": round(usage.ru_maxrss / 1024),
           "wall_s": round(wall, 1), "exit": proc.returncode}
    if proc.returncode != 0:
        row["error"] = err.strip().splitlines()[-1:] if err.strip() else []
    row["over_2gib"] = row["peak_rss_mib"] > LIMIT_MIB
    return row


def main_all(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    ap.add_argument("--only", nargs="*", default=None, help="names of RUNS to measure")
    args = ap.parse_args(argv)
    names = args.only or list(RUNS)
    rows = []
    for name in names:
        row = measure(name, RUNS[name])
        rows.append(row)
        print(f"{name:20s} peak RSS {row['peak_rss_mib']:6d} MiB  {row['wall_s']:6.1f} s  "
              f"exit {row['exit']}{'  OVER 2 GiB' if row['over_2gib'] else ''}", flush=True)
        if args.out:  # after every row: a long sweep keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"cpu": cpu_name(), "cores": os.cpu_count(),
                           "load_1min_end": os.getloadavg()[0],
                           "command": "python benchmarks/peak_rss.py --all" +
                                      (" --only " + " ".join(args.only) if args.only else ""),
                           "rows": rows}, f, indent=1)


def main_one(ndim: int, batch: int):
    from gfnem_jax.experiments import runner
    cfg = dict(task="hypergrid", env=dict(ndim=ndim, height=8, r0=0.001), steps=200,
               batch_size=batch, hidden=256, n_layers=3, log_every=100)
    with tempfile.TemporaryDirectory() as out:
        runner.run(cfg, out, progress=False)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(hypergrid {ndim}-D H=8, batch {batch}, 200 steps)")


if __name__ == "__main__":
    if "--all" in sys.argv[1:]:
        main_all(sys.argv[1:])
    else:
        nd, b = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (2, 16)
        main_one(nd, b)
