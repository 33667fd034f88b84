"""GFlowNet-EM against exact marginalisation on the synthetic corpus (known PCFG), same budget.

Both train the same neural PCFG from the same initialisation (seed) with the same optimizer and
the same number of grammar (M-) updates: marginalisation takes ``--m-updates`` steps of the exact
log-marginal's gradient; GFlowNet-EM takes a fixed schedule of ``--e-per-m`` E-steps per M-step
(``--m-updates`` M-steps), its M-step on one GFlowNet sample per sentence. Reports held-out NLL per
token (exact, inside), the IS bound of the GFlowNet (K samples), and F1 of Viterbi, GFlowNet-sample
and best-of-K trees against the generating trees; writes JSON and prints a table.

    python benchmarks/grammar_gfn_em.py --m-updates 400 --e-per-m 2

With ``--ncfg-corpus`` the corpus comes from a random non-context-free grammar (each rule
conditioned on the parent's label) and the comparison is the best a CFG can do (exact
marginalisation, exact held-out NLL) against an NCFG learned by GFlowNet-EM: its held-out
importance-sampling bound with K GFlowNet samples (an upper bound in expectation) and, when NT is
small enough for parent annotation ((NT+1)*NT <= 512), its exact held-out NLL. ``--ncfg-marginal``
adds the NCFG trained by exact marginalisation through its parent annotation (the reference the
GFlowNet E-step approximates). The generating grammar's NLL is that of the corpus's distribution
(sentences of 2..max_len words).
"""
import argparse
import json
import os
import tempfile
import time

from gfnem_jax.experiments import grammar as E


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m-updates", type=int, default=400)
    ap.add_argument("--e-per-m", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=10)
    ap.add_argument("--nt", type=int, default=10)
    ap.add_argument("--pt", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--policy-dim", type=int, default=64)
    ap.add_argument("--policy-layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--synth-train", type=int, default=1000)
    ap.add_argument("--synth-valid", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evals", type=int, default=4, help="evaluations along each run")
    ap.add_argument("--ncfg-corpus", action="store_true")
    ap.add_argument("--ncfg-marginal", action="store_true",
                    help="with --ncfg-corpus: also train the NCFG by exact marginalisation")
    ap.add_argument("--m-samples", type=int, default=1, help="GFlowNet trees per sentence per M-step")
    ap.add_argument("--m-weights", default="uniform", choices=("uniform", "is"),
                    help="M-step weights: uniform (1/S) or self-normalised importance weights")
    ap.add_argument("--local-search", type=int, default=0, help="GFlowNet-EM: rounds of "
                    "back-and-forth Metropolis-Hastings on the M-step's trees (paper: 10)")
    ap.add_argument("--lr-drop", type=float, default=1.0, help="every run: the grammar's learning "
                    "rate times this after --lr-drop-at of its updates (1 = constant)")
    ap.add_argument("--lr-drop-at", type=float, default=0.75)
    ap.add_argument("--cfg-gflownet", action="store_true", help="with --ncfg-corpus: also train "
                    "the CFG by GFlowNet-EM (the like-for-like comparison of the two grammars)")
    ap.add_argument("--only", default="", help="comma-separated runs to do (marginal, gflownet, "
                    "ncfg_marginal, cfg_gflownet; default all)")
    ap.add_argument("--synth-nt", type=int, default=5, help="nonterminals of the generating grammar")
    ap.add_argument("--synth-rule-scale", type=float, default=4.0,
                    help="--ncfg-corpus: logit scale of the generating NCFG's rule tables")
    ap.add_argument("--synth-pt", type=int, default=10, help="preterminals of the generating grammar")
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--work", default=tempfile.mkdtemp(prefix="grammar_gfn_em_"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "grammar_gfn_em_cpu.json"))
    a = ap.parse_args()
    common = dict(nt=a.nt, pt=a.pt, dim=a.dim, lr=a.lr, max_len=a.max_len, batch_size=a.batch_size,
                  synth_train=a.synth_train, synth_valid=a.synth_valid, seed=a.seed, eval_batch=100,
                  synth_ncfg=a.ncfg_corpus, eval_samples=a.eval_samples, synth_nt=a.synth_nt,
                  synth_pt=a.synth_pt, lr_drop=a.lr_drop, lr_drop_at=a.lr_drop_at,
                  synth_rule_scale=a.synth_rule_scale)
    gfn_steps = a.m_updates * (a.e_per_m + 1)
    gfn = dict(method="gflownet", steps=gfn_steps, schedule="fixed", e_steps=a.e_per_m, m_steps=1,
               policy_dim=a.policy_dim, policy_layers=a.policy_layers, policy_heads=4,
               policy_enc_layers=1, log_every=max(gfn_steps // a.evals, 1),
               m_samples=a.m_samples, m_weights=a.m_weights, ls_rounds=a.local_search)
    runs = {
        "marginal": E.GrammarSettings(method="marginal", steps=a.m_updates,
                                      log_every=max(a.m_updates // a.evals, 1), **common),
        "gflownet": E.GrammarSettings(grammar="ncfg" if a.ncfg_corpus else "cfg", **gfn, **common),
    }
    if a.ncfg_corpus and a.ncfg_marginal:
        runs["ncfg_marginal"] = E.GrammarSettings(method="marginal", steps=a.m_updates, grammar="ncfg",
                                                  log_every=max(a.m_updates // a.evals, 1), **common)
    if a.ncfg_corpus and a.cfg_gflownet:
        runs["cfg_gflownet"] = E.GrammarSettings(grammar="cfg", **gfn, **common)
    if a.only:
        runs = {k: v for k, v in runs.items() if k in a.only.split(",")}
    res = {"settings": vars(a), "runs": {}}
    for name, s in runs.items():
        t = time.perf_counter()
        summary = E.run(s, os.path.join(a.work, name), progress=False)
        rows = [json.loads(l) for l in open(os.path.join(a.work, name, "metrics.jsonl"))]
        res["runs"][name] = {"final": summary["final"], "seconds": round(time.perf_counter() - t, 1),
                             "generating_nll_per_token": summary.get("generating_nll_per_token"),
                             "curve": rows}
        json.dump(res, open(a.out, "w"), indent=2)
    if not {"marginal", "gflownet"} <= set(res["runs"]):
        return
    m, g = res["runs"]["marginal"]["final"], res["runs"]["gflownet"]["final"]
    g_nll = g["nll_per_token"] if g.get("nll_per_token") is not None else g["is_nll_per_token"]
    res["nll_gap_gflownet_minus_marginal"] = g_nll - m["nll_per_token"]
    if a.ncfg_corpus:
        res["is_gap_gflownet_minus_marginal"] = g["is_nll_per_token"] - m["nll_per_token"]
    json.dump(res, open(a.out, "w"), indent=2)
    gen = res['runs']['marginal']['generating_nll_per_token']
    print("generating grammar NLL/token " + (f"{gen:.4f}" if gen is not None else "- (NCFG too large to annotate)"))
    print(f"{'method':10s}{'NLL/tok':>9s}{'IS bound':>9s}{'viterbiF1':>10s}{'sampleF1':>9s}{'bestF1':>8s}{'s':>8s}")
    for name, r in res["runs"].items():
        f = r["final"]
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"
        print(f"{name:10s}{fmt(f.get('nll_per_token')):>9s}{fmt(f.get('is_nll_per_token')):>9s}"
              f"{fmt(f.get('corpus_f1')):>10s}{fmt(f.get('gfn_corpus_f1', f.get('sample_corpus_f1'))):>9s}"
              f"{fmt(f.get('best_corpus_f1')):>8s}{r['seconds']:8.1f}")
    what = "NCFG GFlowNet-EM - CFG exact" if a.ncfg_corpus else "GFlowNet-EM - marginal"
    print(f"{what} NLL/token: {res['nll_gap_gflownet_minus_marginal']:+.4f}")
    if a.ncfg_corpus:
        print(f"NCFG GFlowNet-EM IS bound - CFG exact NLL/token: {res['is_gap_gflownet_minus_marginal']:+.4f}")


if __name__ == "__main__":
    main()
