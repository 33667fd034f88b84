"""Peak resident memory of training runs, as a user's process sees it.

    python benchmarks/peak_rss.py NDIM BATCH      # e.g. 2 16: one HyperGrid runner.run in this
                                                  # process; prints its ru_maxrss in MiB
    python benchmarks/peak_rss.py --all --out benchmarks/results/peak_rss_cpu.json [--only KIND ...]

``NDIM BATCH``: 200 steps, H = 8, 3x256 MLPs, no persistent compilation cache (so the chunk is
compiled here).

``--all``: every run kind at its README (or default) settings, at full length where that takes
under ~10 min on 2 cores (else a short ``--steps``; ``full_length`` in each row), each as
its own ``gfnem train`` child process (no compilation cache, ``--quiet``, a fresh temporary
``--out``, final evaluation and plots included); the child's peak RSS is its own ``ru_maxrss``
from ``os.wait4`` (the child alone, not the other runs). Rows above 2 GiB are marked. The
--posterior-only rows write their grammar and corpus first (``inputs``).
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

# name -> (flags of `gfnem train`, full): the README's command or the kind's defaults; full = at
# the README's / default length, else a short --steps (those that take over ~10 min on 2 cores).
# {tmp} is the row's temporary folder, where ``inputs`` writes the files a command reads.
RUNS = {
    "hypergrid": ("hypergrid --ndim 2 --height 8 --r0 0.001 --loss tb --steps 2000 --batch-size 64 "
                  "--seed 0", True),
    "sets": ("sets --loss reverse_kl --baseline loo", True),
    "sequences": ("sequences --loss renyi --alpha 0.5", True),
    "mixture": ("mixture --seed 0", True),
    "dag": ("dag", True),
    "grammar-marginal": ("grammar --steps 40 --log-every 20", False),
    "grammar-gflownet": ("grammar --method gflownet --max-len 10 --nt 10 --pt 20 --dim 64 "
                         "--policy-layers 2 --policy-dim 64 --policy-enc-layers 1 --schedule fixed "
                         "--e-steps 2 --steps 40 --log-every 20", False),
    # the peaked 4-nonterminal PCFG of docs/experiments/grammar.rst and its three sentences, at
    # the --posterior-only defaults (2 x 64 transformer, temperature 3; 1000 of its 4000 steps:
    # every program it compiles, 3 evaluations, a move to smaller chunks; the full run ~13 min)
    "grammar-posterior-only": ("grammar --posterior-only --grammar {tmp}/G.npz --corpus {tmp}/c.txt "
                               "--steps 1000", False),
    # the README's `--posterior-only` example at paper size: a random 30 / 60 PCFG over the
    # synthetic corpus's words, its first 200 training sentences (up to 20 words)
    "grammar-posterior-only-paper": ("grammar --posterior-only --grammar {tmp}/G.npz --corpus "
                                     "{tmp}/c.txt --steps 100 --log-every 50", False),
    "dvae": ("dvae --method gflownet --codes 8 --data digits --steps 200 --log-every 100", False),
    "ebm-gfn-cd": ("ebm --data 2spirals --bits 4 --steps 1500 --energy-hidden 64 --gfn-hidden 64",
                   True),
    "ebm-gfn-cd-default": ("ebm --steps 100 --log-every 50", False),
    "ebm-pcd": ("ebm --method pcd --data moons", True),
}
CASE_SENTENCES = ["<unk> w3 w7 w7 w7", "<unk> w5 w7 w3 w6", "<unk> <unk> w2 w7 w7"]


def inputs(name: str, tmp: str) -> None:
    """Write the files the command of row ``name`` reads into ``tmp``."""
    if not name.startswith("grammar-posterior-only"):
        return
    import jax
    from gfnem_jax.grammar import corpus as C
    from gfnem_jax.grammar import rules as G
    if name == "grammar-posterior-only":
        g = G.random_grammar(jax.random.PRNGKey(7), 4, 5, 8, scale=5)
        vocab, lines = ["<unk>"] + [f"w{i}" for i in range(1, 8)], CASE_SENTENCES
    else:
        tr = C.synthetic(0, 200, 10, 20)[0]
        vocab = list(tr.vocab)
        g = G.random_grammar(jax.random.PRNGKey(0), 30, 60, len(vocab))
        lines = [" ".join(vocab[w] for w in tr.words[i, :n]) for i, n in enumerate(tr.lengths)]
    G.save_npz(os.path.join(tmp, "G.npz"), g, vocab)
    with open(os.path.join(tmp, "c.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


LIMIT_MIB = 2048


def _commit() -> str:
    """The checkout's commit (with "+" when its tracked files differ from it), or ""."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--", "gfnem_jax"]
                               ).returncode != 0
    except OSError:
        return ""
    return head + ("+" if dirty and head else "")


def measure(name: str, flags: str, full: bool) -> dict:
    """Run ``gfnem train FLAGS`` in a child process; its peak RSS (MiB) and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs(name, tmp)
        cmd = [sys.executable, "-m", "gfnem_jax.cli", "train", *flags.format(tmp=tmp).split(),
               "--out", os.path.join(tmp, "run"), "--quiet", "--no-compile-cache"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read()
        wall = time.time() - t0
    row = {"run": name, "command": "gfnem train " + flags, "peak_rss_mib": round(usage.ru_maxrss / 1024),
           "wall_s": round(wall, 1), "exit": proc.returncode, "full_length": full,
           "commit": _commit()}
    if proc.returncode != 0:
        row["error"] = err.strip().splitlines()[-1:] if err.strip() else []
    row["over_2gib"] = row["peak_rss_mib"] > LIMIT_MIB
    return row


def main_all(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file for the rows (rows of other runs "
                                                "already in it are kept)")
    ap.add_argument("--only", nargs="*", default=None, help="names of RUNS to measure")
    args = ap.parse_args(argv)
    names = args.only or list(RUNS)
    rows = []
    if args.out and os.path.isfile(args.out):  # keep the rows of the runs not measured now
        with open(args.out) as f:
            rows = [r for r in json.load(f).get("rows", []) if r["run"] not in names]
    for name in names:
        row = measure(name, *RUNS[name])
        rows.append(row)
        print(f"{name:20s} peak RSS {row['peak_rss_mib']:6d} MiB  {row['wall_s']:6.1f} s  "
              f"exit {row['exit']}{'  OVER 2 GiB' if row['over_2gib'] else ''}", flush=True)
        if args.out:  # after every row: a long sweep keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"cpu": cpu_name(), "cores": os.cpu_count(),
                           "load_1min_end": os.getloadavg()[0],
                           "command": "python benchmarks/peak_rss.py --all" +
                                      (" --only " + " ".join(args.only) if args.only else ""),
                           "rows": sorted(rows, key=lambda r: list(RUNS).index(r["run"])
                                          if r["run"] in RUNS else len(RUNS))}, f, indent=1)


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
