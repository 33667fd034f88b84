"""Golden runs: one small, seeded configuration of every run kind, to check a refactoring changes
no number.

    python benchmarks/driver_golden.py --out DIR               # run every kind, write DIR/golden.json
    python benchmarks/driver_golden.py --out DIR --only dvae   # some kinds
    python benchmarks/driver_golden.py --compare A B           # the rows of two outputs, bitwise
    python benchmarks/driver_golden.py --out DIR --partial     # also keep each run as if killed
                                                               # after its last checkpoint but one
    python benchmarks/driver_golden.py --out DIR --resume-from OLD
        # copy OLD's half-way runs and resume them to the end with this checkout; their rows must
        # equal OLD's uninterrupted rows

Each kind runs through the CLI (``gfnem train KIND ...``) in a fresh process; ``metrics.jsonl``
is compared with ``wall_s`` (and the other wall-clock fields) dropped. Bitwise equality holds for
the same machine and the same JAX; compare outputs written side by side on one machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

TIMING = ("wall_s", "train_wall_s", "train_s", "eval_wall_s")

GRAMMAR_SMALL = ["--batch-size", "8", "--nt", "3", "--pt", "4", "--dim", "16", "--max-len", "6",
                 "--synth-train", "40", "--synth-valid", "10", "--synth-nt", "2", "--synth-pt", "3",
                 "--synth-vocab", "8", "--log-every", "10", "--checkpoint-every", "20", "--seed", "1"]
KINDS = {
    "hypergrid": ["hypergrid", "--ndim", "2", "--height", "4", "--r0", "0.1", "--steps", "200",
                  "--batch-size", "16", "--hidden", "32", "--log-every", "20",
                  "--checkpoint-every", "40", "--seed", "3"],
    "hypergrid_subtb": ["hypergrid", "--ndim", "2", "--height", "4", "--loss", "subtb", "--steps",
                        "100", "--batch-size", "16", "--hidden", "32", "--log-every", "20",
                        "--checkpoint-every", "40", "--seed", "5", "--epsilon", "0.1"],
    "sets": ["sets", "--steps", "100", "--batch-size", "16", "--hidden", "32", "--log-every", "20",
             "--checkpoint-every", "40", "--seed", "1", "--loss", "db"],
    "sequences": ["sequences", "--steps", "100", "--batch-size", "16", "--hidden", "32",
                  "--log-every", "20", "--checkpoint-every", "40", "--seed", "2",
                  "--loss", "reverse_kl"],
    "mixture": ["mixture", "--n-data", "64", "--steps", "160", "--e-steps", "10", "--em-iters",
                "5", "--log-every", "10", "--checkpoint-every", "20", "--batch-size", "16",
                "--hidden", "16", "--seed", "2", "--no-plot"],
    "grammar_marginal": ["grammar", "--steps", "80"] + GRAMMAR_SMALL,
    "grammar_gflownet": ["grammar", "--method", "gflownet", "--steps", "40", "--policy-layers", "1",
                         "--policy-dim", "32", "--policy-heads", "2", "--policy-enc-layers", "1",
                         "--threshold-start", "100", "--local-search", "1", "--sleep", "0.5",
                         "--eval-samples", "2"] + GRAMMAR_SMALL,
    "dvae": ["dvae", "--method", "gflownet", "--codes", "3", "--grid", "2", "--steps", "40",
             "--e-steps", "3", "--m-steps", "1", "--batch-size", "8", "--channels", "4",
             "--embed-dim", "4", "--hidden", "16", "--n-test", "8", "--log-every", "10",
             "--checkpoint-every", "20", "--no-plot", "--seed", "1"],
    "ebm": ["ebm", "--method", "gfn-cd", "--bits", "4", "--n-train", "2000", "--n-test", "500",
            "--n-eval-samples", "1000", "--batch-size", "32", "--gfn-hidden", "64",
            "--energy-hidden", "64", "--steps", "40", "--log-every", "10",
            "--checkpoint-every", "20", "--seed", "1"],
    "ebm_pcd": ["ebm", "--method", "pcd", "--bits", "4", "--n-train", "2000", "--n-test", "500",
                "--n-eval-samples", "1000", "--batch-size", "32", "--energy-hidden", "64",
                "--steps", "40", "--log-every", "10", "--checkpoint-every", "20", "--seed", "1"],
}


def _gfnem(args, out, extra=()):
    env = dict(os.environ, GFNEM_NO_COMPILE_CACHE="1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "gfnem_jax.cli", "train"] + list(args) + list(extra) + [
        "--out", out, "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def rows_of(run):
    rows = []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            for k in TIMING:
                r.pop(k, None)
            rows.append(r)
    return rows


def _read(path):
    with open(path) as f:
        return json.load(f)


def digest(rows):
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    p.add_argument("--only", nargs="*", default=None, choices=sorted(KINDS))
    p.add_argument("--partial", action="store_true")
    p.add_argument("--resume-from")
    p.add_argument("--compare", nargs=2)
    a = p.parse_args(argv)
    if not a.compare and not a.out:
        p.error("give --out DIR (to run the kinds) or --compare A B")
    if a.compare:
        x, y = (_read(os.path.join(d, "golden.json")) for d in a.compare)
        bad = 0
        for k in sorted(set(x["kinds"]) & set(y["kinds"])):
            same = x["kinds"][k]["sha256"] == y["kinds"][k]["sha256"]
            bad += not same
            print(f"{k:18s} {'identical' if same else 'DIFFERENT'}  ({x['kinds'][k]['rows']} rows)")
        for k in ("resumed",):
            for kk, v in sorted(y.get(k, {}).items()):
                same = v == x["kinds"][kk]["sha256"]
                bad += not same
                print(f"{kk:18s} resumed from the old run: {'identical' if same else 'DIFFERENT'}")
        return 1 if bad else 0
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "golden.json")
    res = _read(path) if os.path.isfile(path) else {"kinds": {}, "resumed": {}}
    import platform
    res["cpu"] = platform.processor() or platform.machine()
    for name in a.only or sorted(KINDS):
        run = os.path.join(a.out, name)
        shutil.rmtree(run, ignore_errors=True)
        sec = _gfnem(KINDS[name], run)
        rows = rows_of(run)
        res["kinds"][name] = {"sha256": digest(rows), "rows": len(rows), "seconds": round(sec, 1)}
        print(f"{name:18s} {len(rows):4d} rows  {sec:6.1f} s  {digest(rows)[:16]}", flush=True)
        if a.partial:  # the run as if killed after its last checkpoint but one
            half = run + ".half"
            shutil.rmtree(half, ignore_errors=True)
            shutil.copytree(run, half)
            cks = sorted((int(d.split("_")[1]), d) for d in os.listdir(os.path.join(half, "checkpoint"))
                         if d.startswith("step_"))
            shutil.rmtree(os.path.join(half, "checkpoint", cks[-1][1]))
        if a.resume_from:
            src = os.path.join(a.resume_from, name + ".half")
            dst = run + ".resumed"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            _gfnem(KINDS[name], dst, extra=("--resume",))
            res["resumed"][name] = digest(rows_of(dst))
            print(f"{'':18s} resumed from {src}: {digest(rows_of(dst))[:16]}", flush=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
