"""`gfnem train grammar`, `gfnem parse`, `gfnem export-grammar`: grammar induction baselines.

A run directory (``run``) holds:
  config.json     every setting (``GrammarSettings``);
  vocab.json      the vocabulary (index = word id; 0 is <unk>); data.json: {"n_train"};
  metrics.jsonl   one row per evaluation: step, nll_per_token (exact; null for an NCFG too large
                  to annotate), sentence_f1, corpus_f1 (Viterbi trees; null without gold trees),
                  sample_sentence_f1, sample_corpus_f1 (trees sampled from the posterior), loss, wall_s;
  checkpoint/     the training state (``gfnem_jax.checkpoint``, atomic; ``run_dir.Checkpoints``:
                  every ``checkpoint_every`` steps, after ``checkpoint_minutes``, at the end);
  summary.json    final metrics, the generating grammar's NLL (synthetic corpus), corpus statistics.
The data are jit arguments of the jitted chunk (never constants); the batch of step t is drawn
with fold_in(fold_in(run_key, t), 0), so a resumed run equals an uninterrupted one.
Evaluation uses the validation corpus (or the training corpus without one), at most
``eval_size`` sentences. NCFGs have no exact inference: their trees for F1 / parsing come from an
MH chain of ``eval_mcmc_steps`` steps started from near-uniform trees, and the NLL is null.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import checkpoint, inside, parse_metrics, run_dir
from gfnem_jax import distributed as D
from gfnem_jax.config import Settings, setting
from gfnem_jax.data import corpus as C
from gfnem_jax.experiments import grammar_baselines as GB
from gfnem_jax.models import grammar as G
from gfnem_jax.models.neural_grammar import NeuralGrammar, TableGrammar


@dataclasses.dataclass(frozen=True)
class GrammarSettings(run_dir.CheckpointSettings):
    method: str = setting("marginal", "training method (gflownet: GFlowNet-EM, the E-step a "
                          "parse-tree GFlowNet)", choices=GB.METHODS + ("gflownet",))
    grammar: str = setting("cfg", "cfg (neural PCFG), ncfg (neural non-context-free grammar) or the "
                                  "path of a .npz grammar file (kept fixed)")
    corpus: str = setting("synthetic", "synthetic, or a text file with one sentence per line")
    gold: str = setting("", "gold trees of the training corpus (bracketed, one per line)")
    valid: str = setting("", "validation text file (default: evaluate on the training corpus)")
    valid_gold: str = setting("", "gold trees of the validation file")
    nt: int = setting(30, "number of nonterminals", min=1)
    pt: int = setting(60, "number of preterminals", min=1)
    dim: int = setting(256, "symbol embedding size", min=1)
    max_len: int = setting(20, "longest sentence kept (words)", min=2)
    vocab_size: int = setting(10000, "vocabulary size including <unk>", min=2)
    steps: int = setting(1000, "training steps", min=1)
    batch_size: int = setting(32, "sentences per step", min=1)
    seed: int = setting(0, "seed of the initialization, the batches and the samplers", min=0)
    lr: float = setting(1e-3, "Adam learning rate of the grammar", gt=0)
    grad_clip: float = setting(3.0, "gradient clipping by global norm (0 = off)", min=0)
    lr_drop: float = setting(1.0, "multiply the grammar's learning rate by this after lr_drop_at of "
                             "its updates (1 = constant)", gt=0, max=1)
    lr_drop_at: float = setting(0.75, "fraction of the grammar's updates after which lr_drop applies",
                                min=0, max=1)
    samples: int = setting(1, "exact-sampling: trees per sentence", min=1)
    mcmc_steps: int = setting(20, "mc-em: MH steps per training step and sentence", min=1)
    eval_mcmc_steps: int = setting(200, "NCFG evaluation / parsing: MH steps from near-uniform trees", min=1)
    log_every: int = setting(100, "steps between evaluations", min=1)
    eval_size: int = setting(0, "sentences evaluated (0 = all)", min=0)
    eval_batch: int = setting(64, "sentences per evaluation batch", min=1)
    synth_train: int = setting(2000, "synthetic corpus: training sentences", min=1)
    synth_valid: int = setting(500, "synthetic corpus: validation sentences", min=1)
    synth_nt: int = setting(5, "synthetic corpus: nonterminals of the generating grammar", min=1)
    synth_pt: int = setting(10, "synthetic corpus: preterminals of the generating grammar", min=1)
    synth_vocab: int = setting(50, "synthetic corpus: words of the generating grammar", min=2)
    synth_ncfg: bool = setting(False, "synthetic corpus: generate from a random non-context-free "
                               "grammar (each rule conditioned on the parent's label)")
    synth_rule_scale: float = setting(4.0, "synthetic NCFG corpus: logit scale of its rule tables "
                                      "(larger: the parent's label matters more)", gt=0)
    # -- method gflownet (GFlowNet-EM; experiments/grammar_gfn.py) --
    policy_layers: int = setting(6, "gflownet: transformer layers over the roots", min=1)
    policy_dim: int = setting(512, "gflownet: transformer width", min=1)
    policy_heads: int = setting(4, "gflownet: attention heads", min=1)
    policy_enc_layers: int = setting(2, "gflownet: sentence-encoder layers", min=0)
    loss: str = setting("subtb", "gflownet: E-step objective",
                        choices=("tb", "db", "subtb", "logvar", "reverse_kl", "forward_kl", "renyi",
                                 "tsallis", "alpha_kl", "wake_sleep", "reverse_wake_sleep"))
    lam: float = setting(1.0, "gflownet: SubTB lambda", gt=0)
    alpha: float = setting(0.5, "gflownet: alpha of renyi / tsallis / alpha_kl")
    temperature: float = setting(1.1, "gflownet: exploration temperature of the E-step's sampler", gt=0)
    gfn_lr: float = setting(3e-4, "gflownet: Adam learning rate of the policy", gt=0)
    gfn_lr_logz: float = setting(3e-3, "gflownet: Adam learning rate of log Z(x)", gt=0)
    schedule: str = setting("adaptive", "gflownet: M-step schedule: adaptive (loss threshold) or "
                            "fixed (e_steps then m_steps)", choices=("adaptive", "fixed"))
    e_steps: int = setting(10, "gflownet: fixed schedule: E-steps per cycle", min=1)
    m_steps: int = setting(1, "gflownet: fixed schedule: M-steps per cycle", min=1)
    threshold_start: float = setting(0.0, "gflownet: adaptive schedule: threshold at step 0 (0 = the "
                                     "paper's: 6 for cfg, 7 for ncfg)", min=0)
    threshold_end: float = setting(0.0, "gflownet: adaptive schedule: final threshold (0 = half the "
                                   "start)", min=0)
    threshold_steps: int = setting(10000, "gflownet: adaptive schedule: steps of the linear fall", min=0)
    sleep: float = setting(0.0, "gflownet: probability of a sleep-phase update after each E-step",
                           min=0, max=1)
    local_search: int = setting(0, "gflownet: local-search rounds before each M-step (paper: 10)", min=0)
    ls_back: int = setting(2, "gflownet: local search: steps undone with P_B", min=1)
    m_samples: int = setting(1, "gflownet: GFlowNet trees per sentence in each M-step (paper: 1)",
                             min=1)
    m_weights: str = setting("uniform", "gflownet: weights of the M-step's trees: uniform (1/S) or "
                             "is (self-normalised importance weights p(x,z) P_B / P_F; not with "
                             "local search)", choices=("uniform", "is"))
    forward_looking: bool = setting(True, "gflownet: plain learned flows instead of forward-looking "
                                    "ones", flag="--no-forward-looking")
    n_buckets: int = setting(4, "gflownet: time buckets of the shrinking root set (0 = no shrinking)",
                             min=0)
    pack: int = setting(0, "gflownet: evaluate the states packed across sentences by root count, "
                        "in chunks of PACK states (0 = by the time buckets of n_buckets); same "
                        "values, fewer FLOPs when sentence lengths differ", min=0)
    posterior_only: bool = setting(False, "gflownet: train only the E-step for the fixed grammar of "
                                   "--grammar G.npz (amortised parsing)")
    eval_samples: int = setting(8, "gflownet: GFlowNet samples per sentence for best-of-K F1 and "
                                "the importance-sampling NLL bound", min=1)
    devices: int = setting(1, "gflownet: split each batch over this many devices (of all processes)",
                           min=1)
    enum_len: int = setting(4, "gflownet posterior-only: exact TV / KL on sentences up to this many "
                            "words (enumerated)", min=2)

    def check(self) -> None:
        if (self.grammar == "ncfg" and self.method not in ("mc-em", "gflownet")
                and not G.annotatable(self.nt)):
            raise ValueError(f"method {self.method} on grammar ncfg needs exact inference by parent "
                             f"annotation, (nt+1)*nt <= {G.MAX_ANNOTATED}; nt={self.nt} is too many: "
                             f"use method mc-em or gflownet, or a smaller nt")
        if self.posterior_only and (self.method != "gflownet" or self.grammar in ("cfg", "ncfg")):
            raise ValueError("posterior_only needs method gflownet and a fixed grammar file (grammar G.npz)")
        if self.devices > 1:
            if self.method != "gflownet":
                raise ValueError(f"devices {self.devices}: only method gflownet runs on several devices")
            D.check_devices(self.devices, self.batch_size)
        if self.method == "gflownet":
            if self.policy_dim % self.policy_heads:
                raise ValueError(f"policy_dim {self.policy_dim} must be a multiple of policy_heads "
                                 f"{self.policy_heads}")
            if self.n_buckets > self.max_len:
                raise ValueError(f"n_buckets must be in 0..max_len={self.max_len}, got {self.n_buckets}")
            if self.ls_back > self.max_len - 1:
                raise ValueError(f"ls_back must be in 1..max_len-1={self.max_len - 1}, got {self.ls_back}")
            if self.lr_drop < 1 and self.schedule == "adaptive" and not self.posterior_only:
                raise ValueError("lr_drop < 1 needs a known number of grammar updates: set schedule "
                                 "fixed (the adaptive schedule decides its M-steps as it runs)")
            if self.m_weights == "is" and self.local_search > 0:
                raise ValueError("m_weights is needs the GFlowNet's own samples: set local_search "
                                 "to 0")
            if self.threshold_end > (self.threshold_start or 7.0):
                raise ValueError(f"threshold_end {self.threshold_end} must not exceed threshold_start")
        if self.grammar not in ("cfg", "ncfg") and not os.path.isfile(self.grammar):
            raise ValueError(f"grammar must be cfg, ncfg or an existing .npz file, got {self.grammar!r}")
        if self.valid_gold and not self.valid:
            raise ValueError("valid_gold needs valid (the validation text file)")
        if self.corpus == "synthetic" and (self.gold or self.valid):
            raise ValueError("gold and valid are for text corpora; the synthetic corpus has its own")
        if self.corpus != "synthetic" and not os.path.isfile(self.corpus):
            raise ValueError(f"corpus must be synthetic or an existing text file, got {self.corpus!r}")


class GrammarState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    chains: G.Tree  # mc-em: one tree per training sentence (a single dummy row otherwise)


def load_data(s: GrammarSettings, vocab=None):
    """(train Corpus, eval Corpus, generating grammar or None). vocab: fixed (file grammar)."""
    unknown = "error" if vocab is not None else "unk"
    if s.corpus == "synthetic":
        args = (s.seed, s.synth_train, s.synth_valid, s.max_len, s.synth_nt, s.synth_pt,
                s.synth_vocab)
        tr, va, gen = (C.synthetic_ncfg(*args, rule_scale=s.synth_rule_scale) if s.synth_ncfg
                       else C.synthetic(*args))
        if vocab is not None:
            tr, va = [dataclasses.replace(c, words=C.encode(c.tokens, vocab, s.max_len, unknown)[0],
                                          vocab=list(vocab)) for c in (tr, va)]
        return tr, va, gen
    tr = C.load(s.corpus, s.gold or None, s.max_len, vocab, s.vocab_size, unknown)
    va = C.load(s.valid, s.valid_gold or None, s.max_len, tr.vocab, unknown=unknown) if s.valid else tr
    return tr, va, None


def build_model(s: GrammarSettings, vocab_size: int):
    """(model, initial params or None, fixed: bool, vocab or None)."""
    if s.grammar in ("cfg", "ncfg"):
        return NeuralGrammar(s.nt, s.pt, vocab_size, s.dim, s.grammar == "ncfg"), None, False, None
    g, vocab = G.load_npz(s.grammar)
    nt, pt, v = G.sizes(g)
    return TableGrammar(nt, pt, v), g, True, vocab


def grammar_updates(s: GrammarSettings) -> int:
    """How many updates the grammar's optimizer makes in the whole run: every step, or for
    GFlowNet-EM's fixed schedule the M-steps of ``steps`` (cycles of e_steps then m_steps)."""
    if s.method != "gflownet":
        return s.steps
    full, rest = divmod(s.steps, s.e_steps + s.m_steps)
    return full * s.m_steps + max(0, rest - s.e_steps)


def make_optimizer(s: GrammarSettings):
    """Adam on the grammar (b1 0.75, as Kim et al. 2019), its learning rate times ``lr_drop``
    after ``lr_drop_at`` of ``grammar_updates(s)``; global-norm clipping first."""
    lr = s.lr
    if s.lr_drop < 1:
        lr = optax.piecewise_constant_schedule(
            s.lr, {max(1, int(s.lr_drop_at * grammar_updates(s))): s.lr_drop})
    adam = optax.adam(lr, b1=0.75, b2=0.999)  # Kim et al. 2019
    return optax.chain(optax.clip_by_global_norm(s.grad_clip), adam) if s.grad_clip > 0 else adam


def make_update(s: GrammarSettings, model, tx, fixed: bool):
    """update(state, key, words_all, lengths_all) -> (state, metrics): one training step."""
    nt = model.nt

    def update(st: GrammarState, key, W, L):
        k_idx, k_z = jax.random.split(jax.random.fold_in(key, 0))
        idx = jax.random.randint(k_idx, (s.batch_size,), 0, W.shape[0])
        words, lengths = W[idx], L[idx]
        acc = jnp.zeros(())
        chains = st.chains
        if s.method == "marginal":
            params, opt, loss = GB.marginal_update(model, tx, st.params, st.opt_state, words, lengths)
        else:
            theta = jax.lax.stop_gradient(st.params)
            if s.method == "exact-sampling":
                trees = GB.exact_samples(model.rule_log_probs(theta), k_z, words, lengths, s.samples)
            else:
                g = model.rule_log_probs(theta)
                start = jax.tree.map(lambda a: a[idx], chains)
                new, acc = GB.mh_chain(lambda x, z: G.log_joint(g, x, z), k_z, words, start,
                                       s.mcmc_steps, nt)
                chains = jax.tree.map(lambda a, b: a.at[idx].set(b), chains, new)
                trees = jax.tree.map(lambda a: a[:, None], new)
            params, opt, loss = GB.m_step(model, tx, st.params, st.opt_state, words, trees)
        if fixed:
            params, opt = st.params, st.opt_state
        return GrammarState(params, opt, st.step + 1, st.key, chains), {"loss": loss, "accept": acc}

    return update


def make_chunk(update, n: int):
    """Jitted (state, words_all, lengths_all) -> (state, metrics[n]); step key fold_in(key, step)."""

    @jax.jit
    def run_chunk(st, W, L):
        return jax.lax.scan(lambda c, _: update(c, jax.random.fold_in(c.key, c.step), W, L),
                            st, None, length=n)

    return run_chunk


def make_decoder(model, max_len: int, mcmc_steps: int):
    """Jitted (params, key, words[B, N], lengths[B]) -> (log p(x) [B], Viterbi trees, sampled
    trees), exact (inside; an NCFG through its parent annotation). An NCFG too large to annotate
    (``models.grammar.annotatable``): log p(x) NaN and MH-chain trees."""

    @jax.jit
    def decode(params, key, words, lengths):
        g = model.rule_log_probs(params)
        if G.is_ncfg(g) and not G.annotatable(model.nt):
            t0 = GB.random_trees(key, lengths, max_len, model.nt)
            t, _ = GB.mh_chain(lambda x, z: G.log_joint(g, x, z), jax.random.fold_in(key, 1),
                               words, t0, mcmc_steps, model.nt)
            return jnp.full(lengths.shape, jnp.nan), t, t
        vt, _ = inside.viterbi(g, words, lengths)
        return inside.log_marginal(g, words, lengths), vt, inside.sample(g, key, words, lengths)

    return decode


def decode_all(decode, params, key, words, lengths, batch: int):
    """Host loop over fixed-size batches (the last one padded): (logp [N], viterbi spans, sample spans)."""
    N = len(lengths)
    logp, vsp, ssp = [], [], []
    for lo in range(0, N, batch):
        hi = min(lo + batch, N)
        pad = batch - (hi - lo)
        w = np.concatenate([words[lo:hi], np.repeat(words[lo:lo + 1], pad, 0)])
        l = np.concatenate([lengths[lo:hi], np.repeat(lengths[lo:lo + 1], pad, 0)])
        lp, vt, st = decode(params, jax.random.fold_in(key, lo), jnp.asarray(w), jnp.asarray(l))
        logp.append(np.asarray(lp)[: hi - lo])
        vsp += parse_metrics.tree_spans_batch(jax.device_get(vt))[: hi - lo]
        ssp += parse_metrics.tree_spans_batch(jax.device_get(st))[: hi - lo]
    return np.concatenate(logp), vsp, ssp


def evaluate(decode, params, ev: C.Corpus, batch: int, key) -> Dict[str, Optional[float]]:
    logp, vsp, ssp = decode_all(decode, params, key, ev.words, ev.lengths, batch)
    row: Dict[str, Optional[float]] = {
        "nll_per_token": (float("nan") if np.isnan(logp).any()  # a training run stops on it
                          else parse_metrics.nll_per_token(logp, ev.lengths))}
    for name, sp in (("", vsp), ("sample_", ssp)):
        f = parse_metrics.span_f1(sp, ev.gold, ev.lengths) if ev.gold is not None else {}
        row[name + "sentence_f1"] = f.get("sentence_f1")
        row[name + "corpus_f1"] = f.get("corpus_f1")
    return row


def _subset(c: C.Corpus, n: int) -> C.Corpus:
    if not n or n >= len(c):
        return c
    return C.Corpus(c.words[:n], c.lengths[:n], c.vocab, None if c.gold is None else c.gold[:n], c.stats)


def init_state(s: GrammarSettings, model, params0, n_train: int, lengths, tx) -> GrammarState:
    key = jax.random.PRNGKey(s.seed)
    params = params0 if params0 is not None else model.init(jax.random.fold_in(key, 0x7FFFFFFF))
    if s.method == "mc-em":
        chains = GB.random_trees(jax.random.fold_in(key, 0x7FFFFFFE), jnp.asarray(lengths), s.max_len, model.nt)
    else:
        chains = GB.random_trees(key, jnp.full((1,), 2), s.max_len, model.nt)
    return GrammarState(params, tx.init(params), jnp.zeros((), jnp.int32), key, chains)


class Plan(NamedTuple):
    """What differs between the methods of a run: the state at step 0, the jitted chunk
    (``make_chunk(n) -> run_chunk(state, data)``), the evaluation row of a state, the
    per-chunk summary of the step metrics (or None) and the grammar parameters of a state."""

    state: Any
    make_chunk: Any
    evaluate: Any
    summarize: Any
    theta: Any


def make_plan(s: GrammarSettings, model, params0, fixed: bool, tr: C.Corpus, ev: C.Corpus, tx,
              decode, key, n_train: Optional[int] = None) -> Plan:
    """The ``Plan`` of a run (``tr`` may be None when only the state's structure is needed, with
    ``n_train`` the number of training sentences)."""
    grammar_eval = lambda theta: evaluate(decode, theta, ev, s.eval_batch, key)
    if s.method == "gflownet":
        from gfnem_jax.experiments import grammar_gfn
        return grammar_gfn.plan(s, model, params0, fixed, tr, ev, tx, grammar_eval, key)
    n = len(tr) if tr is not None else n_train
    lengths = tr.lengths if tr is not None else np.full((n,), 2, np.int32)
    state = init_state(s, model, params0, n, lengths, tx)

    def chunk(c):
        run_chunk = make_chunk(make_update(s, model, tx, fixed), c)
        W, L = jnp.asarray(tr.words), jnp.asarray(tr.lengths)
        return lambda st, _: run_chunk(st, W, L)

    return Plan(state, chunk, lambda st: grammar_eval(st.params), None, lambda st: st.params)


def run(settings: GrammarSettings, out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Train as configured; write the run directory (module doc); return the summary dict."""
    from gfnem_jax.loop import host_loop
    s = settings
    s.validate()
    if resume:
        run_dir.check_resume(s.to_dict(), out, defaults=GrammarSettings.defaults())
    t0 = time.perf_counter()
    fvocab = None if s.grammar in ("cfg", "ncfg") else G.load_npz(s.grammar)[1]
    tr, ev, gen = load_data(s, fvocab)
    model, params0, fixed, _ = build_model(s, len(tr.vocab))
    ev = _subset(ev, s.eval_size)
    run_dir.write_config(out, s.to_dict())
    if D.is_primary():
        json.dump(tr.vocab, open(os.path.join(out, "vocab.json"), "w"))
        json.dump({"n_train": len(tr)}, open(os.path.join(out, "data.json"), "w"))
    tx = make_optimizer(s)
    decode = make_decoder(model, s.max_len, s.eval_mcmc_steps)
    ek = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0x7FFFFFFD)
    plan = make_plan(s, model, params0, fixed, tr, ev, tx, decode, ek)
    state, ck = run_dir.restore_latest(out, plan.state, resume)
    done = int(D.to_local(state.step))
    run_dir.check_steps(s.steps, done, out)
    chunk = run_dir.chunk_size(s.steps, done, s.log_every)
    run_chunk = plan.make_chunk(chunk)
    cks = run_dir.Checkpoints(out, s, last=done if ck else None)
    with run_dir.MetricsLog(out, run_dir.read_rows(out, run_dir.upto(done)) if ck else [],
                            tensorboard=s.tensorboard) as log:
        offset = log.wall_offset()
        rows = log.rows

        def on_log(row):
            log.write({k: v for k, v in row.items() if k != "loss_last"})

        if not rows:
            on_log({"step": 0, **plan.evaluate(D.to_local(state)), "loss": None,
                    "wall_s": round(time.perf_counter() - t0, 4)})
        state = host_loop(state, run_chunk, s.steps - done, chunk, summarize=plan.summarize,
                          evaluate=plan.evaluate, on_log=on_log, progress=progress,
                          desc=f"grammar/{s.method}", wall_offset=offset + time.perf_counter() - t0,
                          postfix=tuple(k for k, ok in (("loss", True),
                                                        ("nll_per_token", s.grammar != "ncfg" or G.annotatable(s.nt)),
                                                        ("is_nll_per_token", s.method == "gflownet"),
                                                        ("corpus_f1", ev.gold is not None)) if ok),
                          **cks.loop_kwargs())
    cks.save(state)
    state = D.to_local(state)
    final = rows[-1]
    summary = {"final": final, "steps": int(state.step), "method": s.method, "grammar": s.grammar,
               "train_stats": tr.stats, "eval_stats": ev.stats, "seconds": round(time.perf_counter() - t0, 2)}
    if gen is not None:
        true = ev.stats["true_nll_per_token"]
        summary["generating_nll_per_token"] = true
        if final["nll_per_token"] is not None and true is not None:
            summary["nll_gap"] = final["nll_per_token"] - true
    if D.is_primary():
        json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    return summary


def load_state(run: str):
    """(settings, model, the restored training state, vocab) of a run directory."""
    s = GrammarSettings.from_dict(run_dir.load_config(run))
    vocab = json.load(open(os.path.join(run, "vocab.json")))
    model, params0, fixed, _ = build_model(s, len(vocab))
    ck = checkpoint.latest(run)
    if ck is None:
        raise ValueError(f"run {run!r} holds no checkpoint")
    n = json.load(open(os.path.join(run, "data.json")))["n_train"] if s.method == "mc-em" else 1
    like = make_plan(s, model, params0, fixed, None, None, make_optimizer(s), None, None, n).state
    return s, model, checkpoint.restore(ck, like), vocab


def load_run(run: str):
    """(settings, model, grammar params, vocab) of a run directory."""
    s, model, st, vocab = load_state(run)
    return s, model, st.model if s.method == "gflownet" else st.params, vocab


DECODERS = ("viterbi", "sample", "greedy", "best-of-K")


def parse(corpus: str, out: str, run: Optional[str] = None, grammar: Optional[str] = None,
          decoder: str = "viterbi", max_len: int = 20, seed: int = 0, batch: int = 64) -> Dict[str, int]:
    """Parse every sentence of 2..max_len words of ``corpus``; write JSON lines
    {"logprob": log p(x) or null (NCFG), "spans": [[i, j], ...]} in order. Returns counts.

    decoder: viterbi (the grammar's most likely tree; NCFG: an MH chain), sample (a posterior
    sample: exact for a CFG, or the GFlowNet's for a gflownet run; line i uses key fold_in(key, i)),
    greedy (argmax of the GFlowNet's P_F at every step) or best-of-K, e.g. best-of-8 (the best of K
    GFlowNet samples under p(x, z)); the last two need a gflownet run."""
    if (run is None) == (grammar is None):
        raise ValueError("parse needs exactly one of run (a run directory) or grammar (a .npz file)")
    best = decoder.startswith("best-of-") and decoder[8:].isdigit() and int(decoder[8:]) >= 1
    if decoder not in DECODERS[:3] and not best:
        raise ValueError(f"decoder must be viterbi, sample, greedy or best-of-K (K >= 1, e.g. "
                         f"best-of-8), got {decoder!r}")
    state = None
    if run is not None:
        s, model, state, vocab = load_state(run)
        params = state.model if s.method == "gflownet" else state.params
        max_len, unknown, mcmc = s.max_len, "unk", s.eval_mcmc_steps
        if s.method != "gflownet":
            state = None
    else:
        params, vocab = G.load_npz(grammar)
        model, unknown, mcmc = TableGrammar(*G.sizes(params)), "error", 200
    if (decoder == "greedy" or best) and state is None:
        raise ValueError(f"decoder {decoder} needs a run trained with method gflownet")
    sents = [l.split() for l in C._read_lines(corpus, "corpus")]
    keep = [t for t in sents if 2 <= len(t) <= max_len]
    words, lengths, n_unk = C.encode(keep, vocab, max_len, unknown)
    decode = make_decoder(model, max_len, mcmc)
    key = jax.random.PRNGKey(seed)
    logp, vsp, ssp = decode_all(decode, params, key, words, lengths, batch)
    if state is not None and decoder != "viterbi":
        from gfnem_jax.experiments import grammar_gfn
        ssp = grammar_gfn.parse_spans(s, model, state, key, words, lengths, decoder, batch)
    with open(out, "w") as f:
        for lp, sp in zip(logp, vsp if decoder == "viterbi" else ssp):
            f.write(json.dumps({"logprob": None if np.isnan(lp) else float(lp), "spans": sp}) + "\n")
    return {"parsed": len(keep), "skipped": len(sents) - len(keep), "unk_tokens": n_unk}


def export_grammar(run_dir: str, out_path: str) -> None:
    """Write the learned PCFG of a run as a .npz grammar file (root, binary, emit, vocab)."""
    s, model, params, vocab = load_run(run_dir)
    if s.grammar == "ncfg":
        raise ValueError(f"run {run_dir!r} learned an NCFG; only context-free grammars can be exported")
    G.save_npz(out_path, model.rule_log_probs(params), vocab)
