"""Side-by-side HyperGrid speed of this checkout against another commit, in one run.

Checks the other commit out into a temporary git worktree, then alternates (A B A B ...) one
``benchmarks/hypergrid_speed.py --quick``-style measurement per configuration in subprocesses
of each tree, so machine load hits both alike; reports the best steps/s of each and the ratio.

    python benchmarks/speed_ab.py --ref 509caff --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[0]] + sys.argv[2:]
import runpy
mod = runpy.run_path(sys.path[0] + "/benchmarks/hypergrid_speed.py")
ndim, height, batch, sep, min_time = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5])
r = mod["bench_one"](ndim, height, batch, 256, 3, sep, "tb", min_time, 500)
print("RESULT " + json.dumps(r))
"""


def measure(tree, cfg, min_time):
    ndim, height, batch, sep = cfg
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, "-c", CHILD, tree, str(ndim), str(height), str(batch),
                          "1" if sep else "0", str(min_time)], capture_output=True, text=True,
                         env=env, cwd=tree, timeout=1800)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(line[-1][7:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the other commit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--configs", nargs="+", default=["2,8,16", "2,8,1024", "4,8,16", "4,8,1024"],
                   help="ndim,height,batch triples (default: 2D/4D height 8, batch 16 and 1024)")
    p.add_argument("--out", default="bench_out/speed_ab.json")
    a = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="speed_ab_")
    other = os.path.join(tmp, "other")
    subprocess.run(["git", "-C", HERE, "worktree", "add", "-f", "--detach", other, a.ref],
                   check=True, capture_output=True)
    cfgs = [tuple(int(v) for v in c.split(",")) + (True,) for c in a.configs]
    rows = []
    try:
        print(f"| config | {a.ref} steps/s | this checkout steps/s | ratio (this / {a.ref}) |")
        print("|---|---:|---:|---:|")
        for cfg in cfgs:
            best = {"ref": 0.0, "this": 0.0}
            for _ in range(a.rounds):
                best["ref"] = max(best["ref"], measure(other, cfg, a.min_time)["steps_per_s"])
                best["this"] = max(best["this"], measure(HERE, cfg, a.min_time)["steps_per_s"])
            name = f"{cfg[0]}d-h{cfg[1]}-b{cfg[2]}"
            rows.append(dict(config=name, ref_steps_per_s=best["ref"], this_steps_per_s=best["this"],
                             ratio=best["this"] / best["ref"]))
            print(f"| {name} | {best['ref']:.1f} | {best['this']:.1f} | {best['this'] / best['ref']:.3f} |",
                  flush=True)
    finally:
        subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", other], capture_output=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(ref=a.ref, rounds=a.rounds, rows=rows), f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
