"""Decoding a corpus into trees, and the evaluation row of the decoded trees.

Two decoders, one host loop (``decode_batches``) and one row (``evaluation_row``):
  grammar   ``make_decoder``: exact inference with the grammar (inside): log p(x), the Viterbi
            tree and an exact posterior sample per sentence (an NCFG through its parent
            annotation; an NCFG too large to annotate: log p(x) NaN and MH-chain trees);
  GFlowNet  ``make_gfn_decoder``: the importance-sampling estimate of log p(x) over K forward
            trajectories, one GFlowNet sample, the best of K samples under p(x, z), the greedy
            tree (argmax of P_F at every step).
Sentences are decoded in fixed-size batches (the last one padded with copies of its first
sentence), so one compiled program serves the whole corpus.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.grammar import baselines, inside
from gfnem_jax.grammar import metrics as M
from gfnem_jax.grammar import rules as G
from gfnem_jax.sampling import Exploration

GREEDY = Exploration(temperature=1e-6)  # argmax of P_F at every step
Spans = List[List[List[int]]]  # per sentence: its inclusive [i, j] spans


def make_decoder(model, max_len: int, mcmc_steps: int):
    """Jitted ``decode(params, key, words int32[B, N], lengths int32[B])`` -> (log p(x) float[B],
    Viterbi trees, sampled trees) (``tree.Tree``s, leaves [B, ...]) of grammar ``model``."""

    @jax.jit
    def decode(params, key, words, lengths):
        g = model.rule_log_probs(params)
        if G.is_ncfg(g) and not G.annotatable(model.nt):
            t0 = baselines.random_trees(key, lengths, max_len, model.nt)
            t, _ = baselines.mh_chain(lambda x, z: G.log_joint(g, x, z),
                                      jax.random.fold_in(key, 1), words, t0, mcmc_steps, model.nt)
            return jnp.full(lengths.shape, jnp.nan), t, t
        vt, _ = inside.viterbi(g, words, lengths)
        return inside.log_marginal(g, words, lengths), vt, inside.sample(g, key, words, lengths)

    return decode


def make_gfn_decoder(env, gfn, rules: Callable, k: int):
    """Jitted ``decode(params, theta, key, words int32[B, L], lengths int32[B], offset)`` ->
    (is_logp float[B], one sample's trees, best-of-k trees, greedy trees) of the GFlowNet ``gfn``
    on the parse-tree environment ``env``, rewards log p_theta(x, z) with ``rules(theta)``.

    is_logp = log (1/k) sum_j p(x, z_j) P_B(tau_j | z_j) / P_F(tau_j | x). Sample j of sentence i
    (global index offset + i) uses key fold_in(key, (offset + i) * k + j), so with k = 1 line i
    draws with fold_in(key, i) whatever the batching."""

    def log_reward(theta, c, st):
        return G.log_joint(rules(theta), c["tokens"], env.tree(st))

    @jax.jit
    def decode(params, theta, key, words, lengths, offset):
        B = words.shape[0]
        cond = {"tokens": words, "length": lengths}
        rep = jax.tree.map(lambda a: jnp.repeat(a, k, 0), cond)
        tr = gfn.sample(params, key, B * k, log_reward, theta, rep, index_offset=offset * k)
        lr = tr.log_reward.reshape(B, k)
        logw = lr + (jnp.sum(tr.log_pb, 1) - jnp.sum(tr.log_pf, 1)).reshape(B, k)
        is_logp = jax.nn.logsumexp(logw, axis=1) - jnp.log(float(k))
        trees = jax.vmap(env.tree)(tr.terminal)
        pick = lambda idx: jax.tree.map(lambda a: a.reshape((B, k) + a.shape[1:])[jnp.arange(B), idx],
                                        trees)
        greedy = gfn.sample(params, key, B, log_reward, theta, cond, explore=GREEDY)
        return (is_logp, pick(jnp.zeros((B,), jnp.int32)), pick(jnp.argmax(lr, axis=1)),
                jax.vmap(env.tree)(greedy.terminal))

    return decode


def decode_batches(decode: Callable, words: np.ndarray, lengths: np.ndarray,
                   batch: int) -> Tuple[np.ndarray, List[Spans]]:
    """Host loop over the corpus (words int32[N, L], lengths int32[N]) in batches of ``batch``.

    ``decode(lo, words int32[batch, L], lengths int32[batch])`` -> (log p float[batch], then
    one or more batches of trees) of the sentences lo, lo+1, ... (the last batch padded). Returns (log p float[N], one span
    list per tree output)."""
    N = len(lengths)
    logp: List[np.ndarray] = []
    spans: Optional[List[Spans]] = None
    for lo in range(0, N, batch):
        hi = min(lo + batch, N)
        pad = batch - (hi - lo)
        w = np.concatenate([words[lo:hi], np.repeat(words[lo:lo + 1], pad, 0)])
        n = np.concatenate([lengths[lo:hi], np.repeat(lengths[lo:lo + 1], pad, 0)])
        lp, *trees = decode(lo, jnp.asarray(w), jnp.asarray(n))
        logp.append(np.asarray(lp)[: hi - lo])
        if spans is None:
            spans = [[] for _ in trees]
        for sp, t in zip(spans, trees):
            sp += M.tree_spans_batch(jax.device_get(t))[: hi - lo]
    return np.concatenate(logp), spans or []


def grammar_spans(decode, params, key, words, lengths, batch: int):
    """(log p(x) float[N], Viterbi spans, sampled spans) of ``make_decoder``'s ``decode``; batch
    lo decodes with key fold_in(key, lo)."""
    logp, (vsp, ssp) = decode_batches(
        lambda lo, w, n: decode(params, jax.random.fold_in(key, lo), w, n), words, lengths, batch)
    return logp, vsp, ssp


def gfn_spans(decode, params, theta, key, words, lengths, batch: int):
    """(is_logp float[N], {"gfn_", "best_", "greedy_": spans}) of ``make_gfn_decoder``'s ``decode``."""
    logp, spans = decode_batches(lambda lo, w, n: decode(params, theta, key, w, n, lo),
                                 words, lengths, batch)
    return logp, dict(zip(("gfn_", "best_", "greedy_"), spans))


def evaluation_row(nll: Dict[str, Any], spans: Dict[str, Spans], ev) -> Dict[str, Any]:
    """``nll`` followed by {prefix + "sentence_f1", prefix + "corpus_f1"} for every prefix of
    ``spans`` against the gold trees of corpus ``ev`` (None without gold trees)."""
    row = dict(nll)
    for name, sp in spans.items():
        f = M.span_f1(sp, ev.gold, ev.lengths) if ev.gold is not None else {}
        row[name + "sentence_f1"] = f.get("sentence_f1")
        row[name + "corpus_f1"] = f.get("corpus_f1")
    return row


def evaluate(decode, params, ev, batch: int, key) -> Dict[str, Optional[float]]:
    """The grammar's row on corpus ``ev``: nll_per_token (exact; NaN without exact inference),
    (sample_)sentence_f1 / corpus_f1 of the Viterbi (sampled) trees."""
    logp, vsp, ssp = grammar_spans(decode, params, key, ev.words, ev.lengths, batch)
    nll = float("nan") if np.isnan(logp).any() else M.nll_per_token(logp, ev.lengths)
    return evaluation_row({"nll_per_token": nll}, {"": vsp, "sample_": ssp}, ev)


def evaluate_gfn(decode, params, theta, ev, batch: int, key, k: int) -> Dict[str, Any]:
    """The GFlowNet's row on corpus ``ev``: is_nll_per_token (the IS bound with k samples),
    is_samples, and the F1 of one sample (gfn_), the best of k (best_) and the greedy tree."""
    logp, spans = gfn_spans(decode, params, theta, key, ev.words, ev.lengths, batch)
    return evaluation_row({"is_nll_per_token": M.nll_per_token(logp, ev.lengths), "is_samples": k},
                          spans, ev)
