"""A grammar run's pieces from its settings ``s`` (``grammar.settings.GrammarSettings``).

  load_data       the training / evaluation corpora (synthetic or text files)
  build_model     the grammar: a neural PCFG / NCFG, or a fixed grammar file
  make_optimizer  Adam on the grammar (with the optional learning-rate drop)
  make_plan       what differs between the methods: the state at step 0, the compiled chunk, the
                  evaluation row of a state and the per-chunk summary (``Plan``)
  eval_corpus     the corpus a run is evaluated on (its own, or a given text file)
  run_files       a run folder's settings, vocabulary and training-set size (damaged files:
                  one ValueError naming the file)
  restore_like    a run folder's settings, model, vocabulary and checkpoint structure

Keys: the run key is PRNGKey(seed); the grammar's parameters come from fold_in(key, keys.PARAMS)
for every method, the evaluation's from fold_in(key, keys.EVAL).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import distributed as D
from gfnem_jax import em, keys, loop, run_dir
from gfnem_jax.grammar import baselines as GB
from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import decode as DEC
from gfnem_jax.grammar import gfn_em
from gfnem_jax.grammar import posterior as POST
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar.neural import NeuralGrammar, TableGrammar
from gfnem_jax.grammar.settings import GrammarSettings


def load_data(s, vocab=None):
    """(train Corpus, eval Corpus, generating grammar or None). vocab: fixed (file grammar)."""
    unknown = "error" if vocab is not None else "unk"
    if s.corpus == "synthetic":
        args = (s.seed, s.synth_train, s.synth_valid, s.max_len, s.synth_nt, s.synth_pt,
                s.synth_vocab)
        tr, va, gen = (C.synthetic_ncfg(*args, rule_scale=s.synth_rule_scale) if s.synth_ncfg
                       else C.synthetic(*args))
        if vocab is not None:
            enc = lambda c: C.encode(c.tokens, vocab, s.max_len, unknown, where="synthetic corpus")
            tr, va = [dataclasses.replace(c, words=enc(c)[0], vocab=list(vocab)) for c in (tr, va)]
        return tr, va, gen
    tr = C.load(s.corpus, s.gold or None, s.max_len, vocab, s.vocab_size, unknown)
    va = C.load(s.valid, s.valid_gold or None, s.max_len, tr.vocab, unknown=unknown) if s.valid else tr
    return tr, va, None


def eval_corpus(s, vocab, corpus: Optional[str] = None, gold: Optional[str] = None):
    """(Corpus, its name) a run of settings ``s`` and vocabulary ``vocab`` is evaluated on: the
    text file ``corpus`` (gold trees ``gold``; every sentence of 2..max_len words; unknown words
    read as <unk>, refused when ``vocab`` has none), or else the run's own evaluation corpus as
    training evaluated it (validation set, or the training corpus without one; its first
    eval_size sentences)."""
    if corpus is not None:
        unknown = "unk" if C.UNK in vocab else "error"
        return C.load(corpus, gold, s.max_len, vocab, unknown=unknown), corpus
    fixed = s.grammar not in ("cfg", "ncfg")
    if s.corpus == "synthetic":
        ev, name = load_data(s, vocab if fixed else None)[1], "synthetic (validation)"
    else:
        path, g = (s.valid, s.valid_gold) if s.valid else (s.corpus, s.gold)
        ev = C.load(path, g or None, s.max_len, vocab, unknown="error" if fixed else "unk")
        name = path
    return subset(ev, s.eval_size), name


def build_model(s, vocab_size: int):
    """(model, initial params or None, fixed: bool, vocab or None)."""
    if s.grammar in ("cfg", "ncfg"):
        return NeuralGrammar(s.nt, s.pt, vocab_size, s.dim, s.grammar == "ncfg"), None, False, None
    g, vocab = G.load_npz(s.grammar)
    nt, pt, v = G.sizes(g)
    return TableGrammar(nt, pt, v), g, True, vocab


def grammar_updates(s) -> int:
    """How many updates the grammar's optimizer makes in the whole run: every step, or for
    GFlowNet-EM's fixed schedule the M-steps of ``steps`` (cycles of e_steps then m_steps)."""
    if s.method != "gflownet":
        return s.steps
    return em.fixed_updates(s.steps, s.e_steps, s.m_steps)[1]


def make_optimizer(s):
    """Adam on the grammar (b1 0.75, as Kim et al. 2019), its learning rate times ``lr_drop``
    after ``lr_drop_at`` of ``grammar_updates(s)``; global-norm clipping first."""
    lr = s.lr
    if s.lr_drop < 1:
        lr = optax.piecewise_constant_schedule(
            s.lr, {max(1, int(s.lr_drop_at * grammar_updates(s))): s.lr_drop})
    adam = optax.adam(lr, b1=0.75, b2=0.999)  # Kim et al. 2019
    return optax.chain(optax.clip_by_global_norm(s.grad_clip), adam) if s.grad_clip > 0 else adam


def subset(c: C.Corpus, n: int) -> C.Corpus:
    """The first ``n`` sentences of ``c`` (all of them for n = 0)."""
    if not n or n >= len(c):
        return c
    return C.Corpus(c.words[:n], c.lengths[:n], c.vocab, None if c.gold is None else c.gold[:n], c.stats)


class Plan(NamedTuple):
    """What differs between the methods of a run: the state at step 0, the compiled chunk
    (``make_chunk(n) -> run_chunk(state, data)``), the evaluation row of a state, the
    per-chunk summary of the step metrics (or None) and the grammar parameters of a state."""

    state: Any
    make_chunk: Callable
    evaluate: Callable
    summarize: Optional[Callable]
    theta: Callable


def make_plan(s, model, params0, fixed: bool, tr: Optional[C.Corpus], ev: Optional[C.Corpus],
              tx, n_train: Optional[int] = None) -> Plan:
    """The ``Plan`` of a run (``tr`` and ``ev`` may be None when only the state's structure is
    needed, with ``n_train`` the number of training sentences)."""
    key = keys.tagged(jax.random.PRNGKey(s.seed), keys.EVAL)
    decode = DEC.make_decoder(model, s.max_len, s.eval_mcmc_steps)
    grammar_eval = lambda theta: DEC.evaluate(decode, theta, ev, s.eval_batch, key)
    if s.method == "gflownet":
        return _gflownet_plan(s, model, params0, fixed, tr, ev, tx, grammar_eval, key)
    n = len(tr) if tr is not None else n_train
    lengths = tr.lengths if tr is not None else np.full((n,), 2, np.int32)
    state = GB.init_state(s.method, s.seed, s.max_len, model, params0, lengths, tx)

    def chunk(c):
        run_chunk = GB.make_chunk(GB.make_step(s, model, tx, fixed), c)
        data = {"words": jnp.asarray(tr.words), "lengths": jnp.asarray(tr.lengths)}
        return lambda st, _: run_chunk(st, data)

    return Plan(state, chunk, lambda st: grammar_eval(st.params), None, lambda st: st.params)


def _gflownet_plan(s, model, params0, fixed: bool, tr, ev, m_tx, grammar_eval, key) -> Plan:
    """The ``Plan`` of a GFlowNet-EM run (``gfn_em``)."""
    b = gfn_em.build(s, model, model.vocab_size)
    theta = GB.init_theta(model, params0, s.seed)  # the baselines' initialisation
    train_grammar = not (fixed or s.posterior_only)
    state, gfn_tx = gfn_em.init_state(s, b, theta, m_tx if train_grammar else None)
    rules = model.rule_log_probs
    k = s.eval_samples
    decode = DEC.make_gfn_decoder(b.env, b.gfn, rules, k)
    # an NCFG too large for exact inference by parent annotation has no exact NLL or exact trees
    no_exact = getattr(model, "ncfg", False) and not G.annotatable(model.nt)

    def log_reward(theta, c, state):
        return G.log_joint(rules(theta), c["tokens"], b.env.tree(state))

    @functools.partial(jax.jit, static_argnums=(5,))
    def sample_trees(params, theta, kk, w, n, k):
        cond = {"tokens": jnp.repeat(w[None], k, 0), "length": jnp.repeat(n[None], k, 0)}
        tr = b.gfn.sample(params, kk, k, log_reward, theta, cond)
        return jax.vmap(b.env.tree)(tr.terminal)

    def make_chunk(n):
        if train_grammar:
            b.cfg.validate(len(tr), b.env.max_steps, n_devices=s.devices)
        mesh = loop.make_mesh(s.devices)
        run_chunk = loop.make_chunk(gfn_em.make_step(b, gfn_tx, m_tx, train_grammar, mesh), n,
                                    em.batch_fn(b.cfg, len(tr)))
        data = D.to_global(gfn_em.corpus_data(tr), mesh)

        def chunk(st, _):
            st, m = run_chunk(D.to_global(st, mesh), data)
            return st, D.to_local(m)

        return chunk

    def evaluate(st):
        st = D.to_local(st)
        row: Dict[str, Any] = {} if no_exact else grammar_eval(st.model)
        if no_exact:
            row["nll_per_token"] = None
        row.update(DEC.evaluate_gfn(decode, st.sampler, st.model, ev, s.eval_batch, key, k))
        g = rules(st.model)
        n_check = s.check_sentences
        if s.enum_states:
            row.update(POST.labelled_metrics(b.env, b.gfn.policy, st.sampler, g, ev.words,
                                             ev.lengths, s.enum_len, s.enum_states, n_check))
        if s.bracket_len >= 3:
            row.update(POST.bracket_metrics(
                lambda kk, w, n, k: sample_trees(st.sampler, st.model, kk, w, n, k), g, ev.words,
                ev.lengths, keys.tagged(key, keys.CHECKS), s.bracket_samples, s.bracket_len,
                n_check))
        return row

    return Plan(state, make_chunk, evaluate, gfn_em.summarize, lambda st: st.model)


def read_json(run: str, name: str, check: Callable[[Any], bool], what: str):
    """The JSON file ``name`` of run folder ``run``; ValueError naming the file when it is
    missing, unreadable, not JSON or not ``what`` (``check`` fails)."""
    path = os.path.join(run, name)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"run {run!r} holds no {name}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"run {run!r}: {name} cannot be read ({e.__class__.__name__})") from None
    except ValueError as e:
        raise ValueError(f"run {run!r}: {name} is damaged (not JSON: {e})") from None
    if not check(obj):
        raise ValueError(f"run {run!r}: {name} is damaged (not {what})")
    return obj


def load_settings(run: str) -> GrammarSettings:
    """The settings of the grammar run folder ``run`` (its config.json; ValueError naming the
    file when it is missing or damaged)."""
    if not os.path.exists(os.path.join(run, run_dir.CONFIG)):
        run_dir.load_config(run)  # its one-line error: the folder holds no run
    cfg = read_json(run, run_dir.CONFIG, lambda c: isinstance(c, dict), "a JSON object")
    try:
        return GrammarSettings.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"run {run!r}: {run_dir.CONFIG} holds settings this version does not "
                         f"read ({e})") from None


def run_files(run: str):
    """(settings, vocab, number of training sentences) of the run folder ``run``, from its
    config.json, vocab.json and data.json (ValueError naming the file when one is damaged)."""
    s = load_settings(run)
    vocab = read_json(run, "vocab.json", lambda v: isinstance(v, list) and len(v) > 0
                      and all(isinstance(w, str) for w in v), "a list of words")
    n = 1
    if s.method == "mc-em":
        n = read_json(run, "data.json", lambda d: isinstance(d, dict) and isinstance(
            d.get("n_train"), int) and d["n_train"] >= 1, "{\"n_train\": N}")["n_train"]
    return s, vocab, n


def restore_like(run: str):
    """(settings, model, vocab, the structure of the run's checkpointed state) of the run folder
    ``run`` (``run_files``)."""
    s, vocab, n = run_files(run)
    model, params0, fixed, _ = build_model(s, len(vocab))
    like = make_plan(s, model, params0, fixed, None, None, make_optimizer(s), n).state
    return s, model, vocab, like


def theta_of(s, state):
    """The grammar parameters of a restored state."""
    return state.model if s.method == "gflownet" else state.params
