"""`gfnem train grammar`, `gfnem parse`, `gfnem export-grammar`, `gfnem eval grammar`: grammar
induction, declared.

The pieces are the grammar package (``gfnem_jax.grammar``: corpora, grammars, inside, the
parse-tree GFlowNet, the baselines, decoding); this module declares the settings and builds the
``driver.Experiment``. A run folder holds:
  config.json     every setting (``GrammarSettings``);
  vocab.json      the vocabulary (index = word id; 0 is <unk>); data.json: {"n_train"};
  metrics.jsonl   one row per evaluation: step, nll_per_token (exact; null for an NCFG too large
                  to annotate), sentence_f1, corpus_f1 (Viterbi trees; null without gold trees),
                  sample_sentence_f1, sample_corpus_f1 (trees sampled from the posterior), loss,
                  wall_s; gflownet runs add the GFlowNet's rows (``grammar.gfn_em``);
  checkpoint/     the training state (every ``checkpoint_every`` steps, after
                  ``checkpoint_minutes``, at the end);
  summary.json    final metrics, the generating grammar's NLL (synthetic corpus), corpus statistics.
  eval.json       (``gfnem eval grammar``) the held-out row recomputed from the newest checkpoint.
The data are jit arguments of the compiled chunk (never constants); the batch of step t is drawn
with fold_in(fold_in(run_key, t), 0) (baselines), so a resumed run equals an uninterrupted one.
Evaluation uses the validation corpus (or the training corpus without one), at most
``eval_size`` sentences. NCFGs have no exact inference: their trees for F1 / parsing come from an
MH chain of ``eval_mcmc_steps`` steps started from near-uniform trees, and the NLL is null.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

from gfnem_jax import driver, sizes
from gfnem_jax.experiments import Command
from gfnem_jax.grammar import parse as P
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar import run as R
from gfnem_jax.grammar.neural import TableGrammar
from gfnem_jax.grammar.settings import GrammarSettings

NAME = "grammar"
HELP = ("grammar induction: a neural PCFG / NCFG (or a given grammar) by GFlowNet-EM (--method "
        "gflownet: a parse-tree GFlowNet as the E-step), marginalisation, exact-sampling EM or "
        "MC-EM")


Settings = GrammarSettings


def owns(config: Dict[str, Any]) -> bool:
    """A config.json of a grammar run (it has no "task" key)."""
    return {"method", "grammar", "corpus", "nt", "pt"} <= set(config)


def build(settings: GrammarSettings) -> driver.Experiment:
    """The run of ``settings``: the corpora, the grammar, the method's ``grammar.run.Plan``."""
    s = settings
    s.validate()
    t0 = time.perf_counter()
    fvocab = None if s.grammar in ("cfg", "ncfg") else G.load_npz(s.grammar)[1]
    tr, ev, gen = R.load_data(s, fvocab)
    model, params0, fixed, _ = R.build_model(s, len(tr.vocab))
    ev = R.subset(ev, s.eval_size)
    plan = R.make_plan(s, model, params0, fixed, tr, ev, R.make_optimizer(s))

    def write_inputs(out):
        for name, obj in (("vocab.json", tr.vocab), ("data.json", {"n_train": len(tr)})):
            with open(os.path.join(out, name), "w") as f:
                json.dump(obj, f)

    def first_rows(state, kept):  # the evaluation at step 0
        return [] if kept else [{"step": 0, **plan.evaluate(state), "loss": None,
                                 "wall_s": round(time.perf_counter() - t0, 4)}]

    def finish(state, rows, out, primary):
        final = rows[-1]
        summary = {"final": final, "steps": int(state.step), "method": s.method,
                   "grammar": s.grammar, "train_stats": tr.stats, "eval_stats": ev.stats,
                   "seconds": round(time.perf_counter() - t0, 2)}
        if gen is not None:
            true = ev.stats["true_nll_per_token"]
            summary["generating_nll_per_token"] = true
            if final["nll_per_token"] is not None and true is not None:
                summary["nll_gap"] = final["nll_per_token"] - true
        if primary:
            with open(os.path.join(out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        return summary

    exact = s.grammar != "ncfg" or G.annotatable(s.nt)
    postfix = [k for k, ok in (("loss", True), ("nll_per_token", exact),
                               ("is_nll_per_token", s.method == "gflownet"),
                               ("corpus_f1", ev.gold is not None)) if ok]
    return driver.Experiment(
        name=f"grammar/{s.method}", settings=s, config=s.to_dict(), state=plan.state,
        make_chunk=plan.make_chunk, summarize=plan.summarize, evaluate=plan.evaluate,
        log_rows=lambda m, row: [{k: v for k, v in row.items() if k != "loss_last"}],
        first_rows=first_rows, write_inputs=write_inputs, finish=finish,
        resume_defaults=GrammarSettings.defaults(), postfix=tuple(postfix))


def run(settings: GrammarSettings, out: str, progress: bool = True,
        resume: bool = False) -> Dict[str, Any]:
    """Train as configured in run folder ``out`` (``driver.run``); returns the summary dict."""
    return driver.run(build(settings), out, progress, resume)["summary"]


def load_state(run: str):
    """(settings, model, the restored training state, vocab) of a run folder."""
    s, model, vocab, like = R.restore_like(run)
    return s, model, driver.restore_run(run, like), vocab


def parse(corpus: str, out: str, run: Optional[str] = None, grammar: Optional[str] = None,
          decoder: str = "viterbi", max_len: int = 20, seed: int = 0,
          batch: int = 64) -> Dict[str, Any]:
    """``grammar.parse.parse`` with the grammar of a run folder ``run`` (its max_len) or of a
    .npz file ``grammar``: one JSON line per line of ``corpus``, null where it is skipped. One
    rule for unknown words: read as <unk> when the vocabulary has it (a run's always does), else
    the line is skipped. Returns the report of what was parsed and skipped."""
    if (run is None) == (grammar is None):
        raise ValueError("parse needs exactly one of run (a run directory) or grammar (a .npz file)")
    P.samples_of(decoder)
    if run is not None:
        R.run_files(run)  # its files first, then the output, then the checkpoint (the work)
    else:
        params, vocab = G.load_npz(grammar)
    P.check_out_file(out)
    gflownet = None
    if run is not None:
        s, model, state, vocab = load_state(run)
        params, max_len, mcmc = R.theta_of(s, state), s.max_len, s.eval_mcmc_steps
        gflownet = (s, state) if s.method == "gflownet" else None
    else:
        model, mcmc = TableGrammar(*G.sizes(params)), 200
    rep = P.parse(corpus, out, model, params, vocab, max_len, mcmc, decoder, seed, batch, gflownet)
    rep["max_len"] = max_len
    return rep


def export_grammar(run: str, out_path: str) -> None:
    """Write the learned PCFG of run folder ``run`` as a .npz grammar file (its directory must
    exist)."""
    R.run_files(run)  # its files first, then the output, then the checkpoint
    P.check_out_file(out_path)
    s, model, state, vocab = load_state(run)
    if s.grammar == "ncfg":
        raise ValueError(f"run {run!r} learned an NCFG; only context-free grammars can be exported")
    P.export(model, R.theta_of(s, state), vocab, out_path)


def evaluate_run(run: str, corpus: Optional[str] = None, gold: Optional[str] = None,
                 write: bool = True) -> Dict[str, Any]:
    """The held-out metrics of run folder ``run`` from its newest checkpoint (verified by
    ``driver.restore_run``): the row ``metrics.jsonl`` logs (``grammar.run.Plan.evaluate``:
    nll_per_token exact by inside, null for an NCFG too large to annotate; is_nll_per_token, the
    importance-sampling bound, for gflownet runs; Viterbi / sampled / GFlowNet span F1s, null
    without gold trees) on the run's validation set as it evaluated it (the first eval_size
    sentences; the training corpus without one), or on the text file ``corpus`` (every sentence
    of 2..max_len words; ``gold``: its gold trees). Writes run/eval.json unless ``write`` is
    False; returns the row with "step", "corpus", "sentences", "tokens" and "eval_wall_s"."""
    if gold is not None and corpus is None:
        raise ValueError(f"gold {gold!r} needs corpus: the file of the sentences its trees parse")
    t0 = time.perf_counter()
    s, vocab, n = R.run_files(run)
    model, params0, fixed, _ = R.build_model(s, len(vocab))
    ev, name = R.eval_corpus(s, vocab, corpus, gold)
    plan = R.make_plan(s, model, params0, fixed, None, ev, R.make_optimizer(s), n)
    state = driver.restore_run(run, plan.state)
    row = plan.evaluate(state)
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
    res = {"step": int(state.step), "corpus": name, "sentences": len(ev),
           "tokens": int(ev.lengths.sum()),
           **{k: ev.stats[k] for k in ("dropped_too_short", "dropped_too_long", "unk_tokens")
              if k in ev.stats and corpus is not None},
           **{k: clean(v) for k, v in row.items()},
           "eval_wall_s": round(time.perf_counter() - t0, 3)}
    if write:
        with open(os.path.join(run, "eval.json"), "w") as f:
            json.dump(res, f, indent=2)
    return res


# -- commands ---------------------------------------------------------------------------------
PARSE_OUT = ("one JSON line per input line, in order: {\"logprob\": log p(sentence), the natural "
             "log of its probability under the grammar (by the inside algorithm, whatever the "
             "decoder; null for an NCFG too large for exact inference), \"spans\": the n-1 "
             "constituents of the decoded tree as [i, j], 0-based word indices with inclusive "
             "ends, in no particular order, the whole sentence [0, n-1] included, single words not (\"the dog barks\" "
             "parsed ((the dog) barks): [[0, 1], [0, 2]])}; the line is null for an empty line, "
             "one word, more than max-len words, or a word the grammar does not know when its "
             "vocabulary has no <unk> (with <unk>, as for every run, unknown words are read as "
             "<unk>); stderr counts the skipped lines by reason with their line numbers")


def _parse_args(p) -> None:
    p.description = f"{p.description}. Output: {PARSE_OUT}."
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a grammar run directory (its learned grammar and max-len)")
    g.add_argument("--grammar", help="a .npz grammar file (from export-grammar or your own)")
    p.add_argument("--corpus", required=True, help="text file, one sentence per line")
    p.add_argument("--out", required=True,
                   help="output file: one JSON line per input line, {\"logprob\", \"spans\"} or "
                        "null (see above; its directory must exist)")
    p.add_argument("--decoder", default="viterbi",
                   help="viterbi (most likely tree), sample (a posterior sample: exact for a CFG, "
                        "the GFlowNet's for a gflownet run), greedy or best-of-K (e.g. best-of-8; "
                        "GFlowNet runs) (default viterbi)")
    p.add_argument("--max-len", dest="max_len", type=int, default=20,
                   help="longest sentence parsed with --grammar (a run uses its own; default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")


def _parse_main(a) -> int:
    rep = parse(a.corpus, a.out, run=a.run, grammar=a.grammar, decoder=a.decoder,
                max_len=a.max_len, seed=a.seed)
    for line in P.skip_notice(rep, rep["max_len"]):
        print(line, file=sys.stderr)
    print(f"parsed {rep['parsed']} of {rep['lines']} lines -> {a.out}", file=sys.stderr)
    return 0


def _export_args(p) -> None:
    p.add_argument("--run", required=True, help="a grammar run directory (CFG)")
    p.add_argument("--out", required=True, help="the .npz grammar file to write (its directory "
                                                "must exist)")


def _export_main(a) -> int:
    export_grammar(a.run, a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


COMMANDS = (
    Command("parse", "parse a corpus with a grammar run or a grammar file", _parse_args,
            _parse_main, (GrammarSettings,)),
    Command("export-grammar", "export a learned CFG as a .npz grammar file", _export_args,
            _export_main, (GrammarSettings,)),
)


def _eval_args(p) -> None:
    p.add_argument("--run", required=True, help="a grammar run directory")
    p.add_argument("--corpus", default=None,
                   help="a text file to evaluate on, one sentence per line (default: the run's "
                        "validation set, as its metrics.jsonl rows were computed)")
    p.add_argument("--gold", default=None, help="gold trees of --corpus (bracketed, one per line)")


def _eval_main(a) -> int:
    print(json.dumps(evaluate_run(a.run, a.corpus, a.gold)))
    return 0


EVAL = Command("grammar", "grammar run: held-out NLL per token (exact; the IS bound for gflownet "
               "runs) and Viterbi span F1 from the newest checkpoint; writes RUN/eval.json",
               _eval_args, _eval_main, (GrammarSettings,))


memory_estimate = sizes.grammar_memory  # the lower bound gfnem train checks before any work
