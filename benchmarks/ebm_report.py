"""Tables from ``benchmarks/ebm.py --steps N`` results: final NLL per density and method, whether
the curves have stopped improving, and the curves themselves.

Merges any number of result files (e.g. one per method group, or a d = 16 and a later seeds run)
and prints reStructuredText tables (the docs' form):

  final   held-out NLL at the last step, mean ± std over the seeds present (n in brackets), beside
          the entropy floor (d <= 20, exact NLL) or the EB-GFN paper's NLL (d = 32, AIS) moved to
          the runs' grid (``paper_nll_same_grid``: + 2 log(R_paper / R), ``ebm.paper_same_grid``);
  change  the NLL's change over the last ``--window`` steps of each curve (seed mean): near 0 (or
          within the AIS s.e. at d = 32) says the run has stopped improving; negative, still falling;
  curves  every ``--every`` steps, the seed-mean NLL of each (density, method).

    python benchmarks/ebm_report.py benchmarks/results/ebm_conv_d16_cpu.json [more.json[:LABEL] ...]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def load(paths):
    """(runs, d): every run of every file (a later file's run replaces an earlier one's with the
    same density, method and seed). ``PATH:LABEL`` appends " LABEL" to that file's method names
    (e.g. ``d16_k16.json:k=16`` for a gfn-cd variant beside the default one)."""
    runs, d = {}, None
    for p in paths:
        p, _, label = p.partition(":")
        with open(p) as f:
            js = json.load(f)
        d = js.get("d", d)
        for r in js["runs"]:
            r = {**r, "method": f"{r['method']} {label}" if label else r["method"]}
            runs[(r["density"], r["method"], r["seed"])] = r
    return list(runs.values()), d


def curve_at(r, step):
    """The curve's NLL at ``step`` (None when the curve has no such point)."""
    for row in r.get("curve", []):
        if row[0] == step:
            return row[1]
    return None


def _rst(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("=" * w for w in widths)
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line, fmt(header), line] + [fmt(r) for r in rows] + [line])


def _methods(runs, order=None):
    """The methods present, in ``order`` first (a list of names), then as they first appear."""
    seen = list(dict.fromkeys(r["method"] for r in runs))
    return [m for m in (order or []) if m in seen] + [m for m in seen if m not in (order or [])]


def report(runs, d, window=1000, every=1000, order=None):
    groups = defaultdict(list)
    for r in runs:
        groups[(r["density"], r["method"])].append(r)
    dens = list(dict.fromkeys(r["density"] for r in runs))
    methods = _methods(runs, order)
    exact = d is None or d <= 20
    ref_name = "floor" if exact else "paper"
    head = ["density", ref_name] + [f"``{m}``" for m in methods]
    final, change = [], []
    for name in dens:
        any_r = next(r for r in runs if r["density"] == name)
        ref = any_r.get("floor") if exact else any_r.get("paper_nll_same_grid", any_r.get("paper_nll"))
        row_f = [name, f"{ref:.3f}" if ref is not None else "—"]
        row_c = [name, row_f[1]]
        for m in methods:
            rs = groups.get((name, m), [])
            if not rs:
                row_f.append("—")
                row_c.append("—")
                continue
            v = np.array([r["test_nll"] for r in rs])
            row_f.append(f"{v.mean():.3f} ± {v.std():.3f} ({len(v)})")
            steps = rs[0]["steps"]
            deltas = [curve_at(r, steps) - curve_at(r, steps - window) for r in rs
                      if curve_at(r, steps) is not None and curve_at(r, steps - window) is not None]
            row_c.append(f"{np.mean(deltas):+.3f}" if deltas else "—")
        final.append(row_f)
        change.append(row_c)
    out = ["final held-out NLL (nats), mean ± std (seeds)", _rst(head, final), "",
           f"change over the last {window} steps (seed mean)", _rst(head, change), ""]
    steps = max(r["steps"] for r in runs)
    cols = list(range(every, steps + 1, every))
    rows = []
    for name in dens:
        for m in methods:
            rs = groups.get((name, m), [])
            if not rs:
                continue
            cells = []
            for s in cols:
                v = [curve_at(r, s) for r in rs if curve_at(r, s) is not None]
                cells.append(f"{np.mean(v):.3f}" if v else "—")
            rows.append([name, f"``{m}``"] + cells)
    out += ["curves: seed-mean NLL", _rst(["density", "method"] + [f"{s:,}" for s in cols], rows)]
    return "\n".join(out)


def plot(runs, d, path, order=None):
    """One panel per density: the seed-mean NLL curve of every method, and the floor (d <= 20) or
    the paper's NLL (d = 32) as a dashed line. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dens = list(dict.fromkeys(r["density"] for r in runs))
    methods = _methods(runs, order)
    cols = min(4, len(dens))
    rows = (len(dens) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), dens):
        for m in methods:
            rs = [r for r in runs if r["density"] == name and r["method"] == m and r.get("curve")]
            if not rs:
                continue
            steps = sorted({row[0] for r in rs for row in r["curve"]})
            mean = [np.mean([v for v in (curve_at(r, s) for r in rs) if v is not None]) for s in steps]
            ax.plot(steps, mean, label=f"{m} ({len(rs)})")
        ref = next((r.get("floor") if (d or 0) <= 20 else r.get("paper_nll_same_grid", r.get("paper_nll"))
                    for r in runs if r["density"] == name), None)
        if ref is not None:
            ax.axhline(ref, ls="--", c="k", lw=0.8, label="floor" if (d or 0) <= 20 else "paper")
        ax.set_title(f"{name}, d = {d}")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out NLL (nats)")
        lo = ref if ref is not None else min(r["test_nll"] for r in runs if r["density"] == name)
        ax.set_ylim(lo - 0.05, lo + (0.6 if (d or 0) <= 20 else 2.0))
    for ax in axes.ravel()[len(dens):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--window", type=int, default=1000, help="steps over which 'change' is taken")
    ap.add_argument("--every", type=int, default=1000, help="steps between the curves' columns")
    ap.add_argument("--plot", help="also write the curves to this PNG (matplotlib)")
    ap.add_argument("--order", default="gfn-cd,gfn,pcd,gwg", help="methods' column order (first)")
    a = ap.parse_args(argv)
    runs, d = load(a.files)
    order = a.order.split(",")
    print(report(runs, d, a.window, a.every, order))
    if a.plot:
        plot(runs, d, a.plot, order)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
