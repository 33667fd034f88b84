"""Exact inference for PCFGs with preterminals summed out: inside, E-step, posterior sampling, Viterbi.

Batched over sentences padded to N = max_len (words int32[B, N], lengths int32[B], 2 <= n <= N),
in log space, vectorised over spans: one ``lax.scan`` over the span width w = 3..N; every start i
and split d of that width is computed at once (no Python loop over sentences or splits).

Chart (``Chart``): beta[b, w, i, A] = log sum over trees z of the span [i, i+w) rooted at A of
p(words of the span, z | A), for w >= 2 (rows w < 2 unused). Leaves are preterminals, summed out:
  ql[b, p, A, C] = log sum_T p(A -> T C) p(T -> x_p)      (left child is the word p)
  qr[b, p, A, B] = log sum_T p(A -> B T) p(T -> x_p)      (right child is the word p)
  pp[b, p, A]    = log sum_{T,U} p(A -> T U) p(T -> x_p) p(U -> x_{p+1}) = beta[b, 2, p, A]
Recursion for w >= 3 (sum or max over the split d and the child labels):
  beta[w, i, A] = (+) { (+)_{d=2..w-2, B, C} log p(A -> B C) + beta[d, i, B] + beta[w-d, i+d, C],
                        (+)_C ql[i, A, C] + beta[w-1, i+1, C],  (+)_B qr[i+w-1, A, B] + beta[w-1, i, B] }
  log p(x) = logsumexp_A log p(S -> A) + beta[n, 0, A].
Sum mode computes the nonterminal-nonterminal part as matmuls in probability space with per-span
shifts (the shifts are under stop_gradient; the value is exact up to float rounding, and terms
below exp(-87) relative to the largest are lost in float32). Max mode (Viterbi) enumerates the
(start, split) pairs of each width from a static table.
The gradient of sum_b log p(x_b) with respect to the log-probabilities is the expected rule counts
(``expected_counts``). Trees are decoded top-down from a chart: exact posterior samples (sum
chart) or the most likely tree (max chart), in the ``Tree`` layout of ``grammar.tree``.
An NCFG (rules conditioned on the parent's label, ``binary`` [NT+1, NT, S, S]) is accepted by every
function here: it runs as its parent-annotated PCFG (``grammar.rules.parent_annotate``: exact, with
NT' = (NT+1)*NT nonterminals, so for small NT only) and decoded labels are mapped back.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.grammar.rules import is_ncfg, parent_annotate
from gfnem_jax.grammar.tree import Tree

NEG = -jnp.inf


class Chart(NamedTuple):
    beta: jax.Array  # float[B, N+1, N, NT]
    ql: jax.Array  # float[B, N, NT, NT]
    qr: jax.Array  # float[B, N, NT, NT]
    pp: jax.Array  # float[B, N, NT]
    root: jax.Array  # float[B, NT]  log p(S -> A) + beta[n, 0, A]
    logz: jax.Array  # float[B]  log p(x) (sum mode) or the Viterbi score (max mode)


def _shift(x, axis):
    """exp(x - m), m = max over axis (stop-gradient; 0 where all entries are -inf)."""
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.exp(x - m), m


def _log(x):
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), NEG)


def _leaf_tables(grammar, words):
    nt = grammar["root"].shape[-1]
    P = jnp.exp(grammar["binary"])
    term = jnp.moveaxis(grammar["emit"][:, words], 0, -1)  # [B, N, PT]
    et, mt = _shift(term, -1)
    ql = _log(jnp.einsum("bpt,atc->bpac", et, P[:, nt:, :nt])) + mt[..., None]
    qr = _log(jnp.einsum("zpt,act->zpac", et, P[:, :nt, nt:])) + mt[..., None]
    et1, mt1 = jnp.roll(et, -1, axis=1), jnp.roll(mt, -1, axis=1)
    tmp = jnp.einsum("bpu,atu->bpat", et1, P[:, nt:, nt:])
    pp = _log(jnp.einsum("bpt,bpat->bpa", et, tmp)) + mt + mt1
    return ql, qr, pp


def _pair_table(N: int):
    """For each width w: the (start, split) pairs with i + w <= N and 2 <= d <= w - 2, padded."""
    pairs = [[(i, d) for i in range(N - w + 1) for d in range(2, w - 1)] for w in range(N + 1)]
    P = max(1, max(len(p) for p in pairs))
    pi = np.zeros((N + 1, P), np.int32)
    pd = np.full((N + 1, P), 2, np.int32)
    pv = np.zeros((N + 1, P), bool)
    for w, ps in enumerate(pairs):
        for k, (i, d) in enumerate(ps):
            pi[w, k], pd[w, k], pv[w, k] = i, d, True
    return pi, pd, pv


def chart(grammar, words: jax.Array, lengths: jax.Array, mode: str = "sum") -> Chart:
    """The inside chart of a batch (mode "sum": inside; "max": Viterbi scores). See module doc.

    Layout inside the scan: ``lc[b, i, d]`` = beta(start i, width d) and ``rc[b, j, N - d]`` =
    beta(end j, width d), so that for width w the left children (i, d) of every span are
    lc[:, :, :N] and the right children (i+d, w-d) are the slice rc[:, w:w+N, N-w:2N-w]: no
    gathers (whose gradients are scatters). Max mode also keeps, for every span as a right child,
    u[b, w, i, A, B] = max_C log p(A -> B C) + beta(i, w)[C], so a (span, split) pair costs NT^2.
    """
    if mode not in ("sum", "max"):
        raise ValueError(f"mode must be sum or max, got {mode!r}")
    grammar = parent_annotate(grammar)
    nt = grammar["root"].shape[-1]
    Bsz, N = words.shape
    ql, qr, pp = _leaf_tables(grammar, words)
    red = jax.nn.logsumexp if mode == "sum" else jnp.max
    dt = pp.dtype
    lc = jnp.zeros((Bsz, N, N + 1, nt), dt).at[:, :, 2].set(pp)
    rc = jax.lax.dynamic_update_slice(jnp.zeros((Bsz, 2 * N + 1, 2 * N, nt), dt), pp[:, :, None],
                                      (0, 2, N - 2, 0))
    qr_pad = jnp.concatenate([qr, jnp.zeros_like(qr)], axis=1)
    ii = jnp.arange(N)[:, None]
    dd = jnp.arange(N)[None, :]
    rule_nn = grammar["binary"][:, :nt, :nt]
    P_nn = jnp.exp(rule_nn)
    if mode == "max":
        pi, pd, pv = (jnp.asarray(a) for a in _pair_table(N))
        umax = lambda beta: jnp.max(rule_nn + beta[..., None, None, :], axis=-1)  # [.., A, B]
        u0 = jnp.zeros((Bsz, N + 1, N, nt, nt), dt).at[:, 2].set(umax(pp))

    def width(carry, w):
        lc, rc = carry[:2]
        right = jax.lax.dynamic_slice(rc, (0, w, N - w, 0), (Bsz, N, N, nt))  # [b, i, d]
        r1 = right[:, :, 1]  # span (i+1, w-1)
        l1 = jax.lax.dynamic_index_in_dim(lc, w - 1, axis=2, keepdims=False)  # span (i, w-1)
        lp = red(ql + r1[:, :, None, :], axis=-1)
        q_r = jax.lax.dynamic_slice(qr_pad, (0, w - 1, 0, 0), (Bsz, N, nt, nt))
        rp = red(q_r + l1[:, :, None, :], axis=-1)
        if mode == "sum":
            ok = (dd >= 2) & (dd <= w - 2) & (ii + w <= N)  # [N(i), N(d)]
            L, ml = _shift(lc[:, :, :N], -1)
            R, mr = _shift(right, -1)
            s = jnp.where(ok[None, :, :, None], ml + mr, NEG)
            S, M = _shift(s, 2)
            X = jnp.einsum("bidB,bidC->biBC", L, R * S)
            nn = _log(jnp.einsum("biBC,ABC->biA", X, P_nn)) + M[:, :, 0]
        else:
            u = carry[2]
            i, d, v = pi[w], pd[w], pv[w]
            left = lc[:, i, d]  # [B, P, NT]
            ur = u[:, jnp.clip(w - d, 0, N), jnp.minimum(i + d, N - 1)]  # [B, P, A, B]
            t = jnp.max(ur + left[:, :, None, :], axis=-1)  # [B, P, A]
            seg = (i[None, :] == jnp.arange(N)[:, None]) & v[None, :]  # [N, P]
            nn = jnp.max(jnp.where(seg[None, :, :, None], t[:, None], NEG), axis=2)
        new = red(jnp.stack([nn, lp, rp]), axis=0)
        lc = jax.lax.dynamic_update_slice(lc, new[:, :, None], (0, 0, w, 0))
        rc = jax.lax.dynamic_update_slice(rc, new[:, :, None], (0, w, N - w, 0))
        if mode == "max":
            return (lc, rc, jax.lax.dynamic_update_index_in_dim(carry[2], umax(new), w, axis=1)), None
        return (lc, rc), None

    carry = (lc, rc) if mode == "sum" else (lc, rc, u0)
    if N >= 3:
        carry, _ = jax.lax.scan(width, carry, jnp.arange(3, N + 1))
    lc = carry[0]
    top = lc[jnp.arange(Bsz), 0, lengths]  # [B, NT]
    root = grammar["root"][None] + top
    return Chart(jnp.swapaxes(lc, 1, 2), ql, qr, pp, root, red(root, axis=-1))


def log_marginal(grammar, words: jax.Array, lengths: jax.Array) -> jax.Array:
    """float[B]: log p(x) of each sentence by the inside algorithm."""
    return chart(grammar, words, lengths, "sum").logz


def length_log_probs(grammar, max_len: int) -> jax.Array:
    """float[max_len + 1]: log P(the sentence has n words) for n = 0..max_len under the grammar's
    top-down generative process (-inf for n < 2: every tree has two or more leaves). Exact: the
    inside algorithm with each preterminal's emission summed over the vocabulary (log 1 = 0).

    Corpora drawn by rejecting sentences longer than ``max_len`` follow p(x) / P(2 <= n <= max_len);
    their exact NLL needs ``logsumexp`` of this (``grammar.corpus.synthetic``)."""
    pt = grammar["emit"].shape[-2]
    g = {**grammar, "emit": jnp.zeros((pt, 1), grammar["emit"].dtype)}
    n = jnp.arange(2, max_len + 1)
    lp = log_marginal(g, jnp.zeros((max_len - 1, max_len), jnp.int32), n)
    return jnp.concatenate([jnp.full((2,), NEG, lp.dtype), lp])


def expected_counts(grammar, words: jax.Array, lengths: jax.Array):
    """Expected rule counts sum_b E_{z ~ p(z|x_b)}[#rule] as the gradient of sum_b log p(x_b)
    with respect to the log-probability tables (pytree like ``grammar``; preterminal rules
    included, with the preterminal of each word marginalised)."""
    return jax.grad(lambda g: jnp.sum(log_marginal(g, words, lengths)))(grammar)


def _decode_one(grammar, ch: Chart, b, n, key, sample: bool) -> Tree:
    """Top-down decoding of one sentence (row b of the chart); depth-first, pre-order."""
    nt = grammar["root"].shape[-1]
    N = ch.beta.shape[2]
    M = N - 1
    beta, ql, qr, pp = ch.beta[b], ch.ql[b], ch.qr[b], ch.pp[b]
    rule_nn = grammar["binary"][:, :nt, :nt]
    dd = jnp.arange(N)
    k_root, k_loop = jax.random.split(key)
    pick = (lambda k, s: jax.random.categorical(k, s)) if sample else (lambda k, s: jnp.argmax(s))
    A0 = pick(k_root, ch.root[b]).astype(jnp.int32)
    stack = jnp.zeros((M + 1, 3), jnp.int32).at[0].set(jnp.stack([0, n, A0]))
    tree = Tree(*(jnp.zeros((M,), jnp.int32) for _ in range(4)), n)

    def body(t, carry):
        stack, top, tree = carry
        i, w, A = stack[top - 1]
        top = top - 1
        lft = jnp.where((dd >= 2)[:, None], beta[dd, i], NEG)  # [N(d), NT]
        lft = jnp.concatenate([lft, jnp.where(dd == 1, 0.0, NEG)[:, None]], 1)
        wr = jnp.clip(w - dd, 0, N)
        rgt = jnp.where((wr >= 2)[:, None], beta[wr, jnp.minimum(i + dd, N - 1)], NEG)
        rgt = jnp.concatenate([rgt, jnp.where(wr == 1, 0.0, NEG)[:, None]], 1)
        rule = jnp.concatenate([
            jnp.concatenate([rule_nn[A], qr[jnp.minimum(i + w - 1, N - 1), A][:, None]], 1),
            jnp.concatenate([ql[i, A], pp[i, A][None]])[None]], 0)  # [NT+1, NT+1]
        ok = (dd >= 1) & (dd <= w - 1)
        s = jnp.where(ok[:, None, None], rule[None] + lft[:, :, None] + rgt[:, None, :], NEG)
        idx = pick(jax.random.fold_in(k_loop, t), s.reshape(-1))
        idx = idx.astype(jnp.int32)
        d, B, C = idx // ((nt + 1) ** 2), (idx // (nt + 1)) % (nt + 1), idx % (nt + 1)
        live = t < n - 1
        slot = jnp.where(live, n - 2 - t, M - 1)

        def put(a, v):
            return a.at[slot].set(jnp.where(live, v, a[slot]))

        tree = Tree(put(tree.left, i), put(tree.split, i + d), put(tree.right, i + w),
                    put(tree.label, A), tree.length)
        push_r = live & (C < nt)
        stack = stack.at[top].set(jnp.where(push_r, jnp.stack([i + d, w - d, C]), stack[top]))
        top = top + push_r
        push_l = live & (B < nt)
        stack = stack.at[top].set(jnp.where(push_l, jnp.stack([i, d, B]), stack[top]))
        top = top + push_l
        return stack, jnp.maximum(top, 1), tree

    _, _, tree = jax.lax.fori_loop(0, M, body, (stack, jnp.ones((), jnp.int32), tree))
    return tree


def sample(grammar, key, words: jax.Array, lengths: jax.Array) -> Tree:
    """Exact posterior samples z_b ~ p(z | x_b), one per sentence (Tree with leaves [B, ...]).
    Sentence b uses the key fold_in(key, b)."""
    g = parent_annotate(grammar)
    ch = chart(g, words, lengths, "sum")
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(words.shape[0]))
    return _unannotate(grammar, jax.vmap(lambda b, n, k: _decode_one(g, ch, b, n, k, True))(
        jnp.arange(words.shape[0]), lengths.astype(jnp.int32), keys))


def viterbi(grammar, words: jax.Array, lengths: jax.Array):
    """(Tree [B, ...], float[B]): the most likely tree argmax_z log p(x, z) and its score."""
    g = parent_annotate(grammar)
    ch = chart(g, words, lengths, "max")
    key = jax.random.PRNGKey(0)
    tree = jax.vmap(lambda b, n: _decode_one(g, ch, b, n, key, False))(
        jnp.arange(words.shape[0]), lengths.astype(jnp.int32))
    return _unannotate(grammar, tree), ch.logz


def _unannotate(grammar, tree: Tree) -> Tree:
    """Labels P*NT + A of a tree decoded from a parent-annotated NCFG back to A."""
    if not is_ncfg(grammar):
        return tree
    return tree._replace(label=tree.label % grammar["root"].shape[-1])
