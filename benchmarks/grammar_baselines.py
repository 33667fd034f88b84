"""Grammar baselines on the synthetic corpus: steps / seconds for marginalisation to reach a
held-out NLL per token within 0.05 nats of the generating grammar, and F1 against gold trees.

    python benchmarks/grammar_baselines.py [--steps 3000] [--methods marginal,exact-sampling,mc-em]

Each method trains the neural PCFG (--nt/--pt/--dim) with `gfnem_jax.experiments.grammar.run`
(run directories under --work); the held-out set is the synthetic validation split (500
sentences). Writes benchmarks/results/grammar_baselines_cpu.json and prints a table.
"""
import argparse
import json
import os
import tempfile

from gfnem_jax.experiments import grammar as E


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="marginal,exact-sampling,mc-em")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--nt", type=int, default=10)
    ap.add_argument("--pt", type=int, default=20)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=tempfile.mkdtemp(prefix="grammar_bench_"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "grammar_baselines_cpu.json"))
    a = ap.parse_args()
    res = {"settings": vars(a), "methods": {}}
    for m in a.methods.split(","):
        s = E.GrammarSettings(method=m, nt=a.nt, pt=a.pt, dim=a.dim, steps=a.steps, lr=a.lr,
                              log_every=a.log_every, seed=a.seed, eval_batch=100)
        summary = E.run(s, os.path.join(a.work, m), progress=False)
        rows = [json.loads(l) for l in open(os.path.join(a.work, m, "metrics.jsonl"))]
        true = summary["generating_nll_per_token"]
        hit = next((r for r in rows if r["nll_per_token"] is not None and r["nll_per_token"] <= true + 0.05), None)
        res["methods"][m] = {"final": summary["final"], "generating_nll_per_token": true,
                             "gap": summary.get("nll_gap"),
                             "reached_0.05_at_step": hit and hit["step"], "reached_0.05_at_s": hit and hit["wall_s"],
                             "curve": [{k: r[k] for k in ("step", "nll_per_token", "sentence_f1", "corpus_f1", "wall_s")} for r in rows]}
        json.dump(res, open(a.out, "w"), indent=2)
    print(f"{'method':16s}{'NLL/tok':>9s}{'true':>8s}{'gap':>8s}{'sentF1':>8s}{'corpF1':>8s}{'reach step':>11s}{'reach s':>9s}")
    for m, r in res["methods"].items():
        f = r["final"]
        print(f"{m:16s}{f['nll_per_token']:9.4f}{r['generating_nll_per_token']:8.4f}{r['gap']:8.4f}"
              f"{f['sentence_f1']:8.3f}{f['corpus_f1']:8.3f}{str(r['reached_0.05_at_step']):>11s}{str(r['reached_0.05_at_s']):>9s}")


if __name__ == "__main__":
    main()
