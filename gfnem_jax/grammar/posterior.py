"""How far a parse-tree GFlowNet is from the posterior p(z | x): the checks every GFlowNet grammar
run reports (``gfnem train grammar --method gflownet``), so that a sampler that has collapsed onto
trees of little posterior mass is seen even when its training loss is small.

Two checks, on the first sentences of the evaluation corpus that qualify:

  labelled trees  exact TV and both KLs between the GFlowNet's terminal distribution over
                  labelled trees and p(z | x), by dynamic programming over every state of the
                  sentence (no sampling). A sentence qualifies when its state count
                  (``state_count``) is within a budget: the states of n words with NT labels grow
                  like Catalan(n-1) NT^(n-1), so this is for short sentences and small grammars.
  bracketings     TV between the empirical distribution of K GFlowNet samples over unlabelled
                  bracketings and the exact posterior over bracketings, p(b | x) = sum over the
                  labellings of b of p(x, z) / p(x) (``bracket_log_joint``: a sum over labels
                  along the tree; p(x) by inside). With q_K the empirical distribution of the K
                  samples and S the bracketings seen,
                      TV = 1/2 [ sum_{b in S} |q_K(b) - p(b | x)| + (1 - sum_{b in S} p(b | x)) ],
                  exact in p, Monte Carlo in q, so it has a floor: ``bracket_tv_floor`` is the
                  same estimator on K exact posterior samples (inside sampling), what a perfect
                  sampler would score. Needs p(x): a CFG, or an NCFG small enough for exact
                  inference by parent annotation (otherwise None).
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import metrics
from gfnem_jax.grammar import inside
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar.env import ParseTree
from gfnem_jax.grammar.tree import Tree, children
from gfnem_jax.nets.policy import PolicyOutput


# -- counts ------------------------------------------------------------------------------------
def state_count(n: int, nt: int) -> int:
    """Number of states (forests) of one n-word sentence with nt labels: sum over the ways of
    cutting the words into consecutive spans of prod_span f(width), f(w) = Catalan(w-1) nt^(w-1)
    labelled trees over a span of w words."""
    f = [0] + [math.comb(2 * (w - 1), w - 1) // w * nt ** (w - 1) for w in range(1, n + 1)]
    c = [1] + [0] * n
    for i in range(1, n + 1):
        c[i] = sum(c[i - w] * f[w] for w in range(1, i + 1))
    return c[n]


def bracketings(n: int) -> int:
    """Catalan(n-1): the unlabelled binary bracketings of n words."""
    return math.comb(2 * (n - 1), n - 1) // n


# -- bracketings -------------------------------------------------------------------------------
def bracket_log_joint(grammar, words: jax.Array, tree: Tree) -> jax.Array:
    """log sum_{labellings of z's bracketing} p(x, z'): one sentence (words int32[L]) and one tree
    (labels ignored). A PCFG or an NCFG (binary rules with a leading parent axis, the root's
    parent index NT), in the conventions of ``rules.log_joint``.

    Bottom-up over the nodes sorted by width: beta[t, P, A] = log sum_{B, C} rule[P, A, B, C]
    + c_left(A, B) + c_right(A, C), with c(A, B) = beta[child, A, B] for an internal child and
    emit[B, word] for a word (a preterminal B); P is the parent's label (one row for a PCFG).
    log p(x, b) = logsumexp_A root[A] + beta[root, NT, A]  (row 0 for a PCFG).
    """
    nt, pt, _ = G.sizes(grammar)
    rule = grammar["binary"]
    ncfg = rule.ndim == 4
    if not ncfg:
        rule = rule[None]  # [1, NT, S, S]
    P = rule.shape[0]
    M = tree.left.shape[0]
    lc, rc, _, valid = children(tree)
    width = jnp.where(valid, tree.right - tree.left, 10 ** 6)
    order = jnp.argsort(width)

    def child_table(beta, c, pos):
        # [P', NT(parent A), S(child B)] contributions, P' broadcast over the node's parent
        emit = grammar["emit"][:, words[pos]]  # [PT]: the child as a word at position pos
        internal = beta[jnp.maximum(c, 0)]  # [P, NT] indexed (parent of child = A, B)
        if ncfg:
            nt_part = internal[:nt]  # child's parent is A in 0..NT-1: rows A
        else:
            nt_part = jnp.broadcast_to(internal[0], (nt, nt))
        nt_part = jnp.where(c >= 0, nt_part, -jnp.inf)
        pt_part = jnp.where(c >= 0, -jnp.inf, jnp.broadcast_to(emit, (nt, pt)))
        return jnp.concatenate([nt_part, pt_part], 1)  # [NT(A), S]

    def body(i, beta):
        t = order[i]
        cl = child_table(beta, lc[t], tree.left[t])
        cr = child_table(beta, rc[t], jnp.maximum(tree.right[t] - 1, 0))
        s = rule + cl[None, :, :, None] + cr[None, :, None, :]  # [P, NT, S, S]
        b = jax.nn.logsumexp(s.reshape(P, nt, -1), axis=-1)
        return beta.at[t].set(jnp.where(valid[t], b, beta[t]))

    beta = jax.lax.fori_loop(0, M, body, jnp.full((M, P, nt), -jnp.inf))
    is_root = valid & (tree.right - tree.left == tree.length)
    root_t = jnp.argmax(is_root)
    top = beta[root_t, P - 1] if ncfg else beta[root_t, 0]
    return jax.nn.logsumexp(grammar["root"] + top)


def has_marginal(grammar) -> bool:
    """Whether p(x) is exact for ``grammar`` (a PCFG, or an NCFG annotatable by parents)."""
    return not G.is_ncfg(grammar) or G.annotatable(G.sizes(grammar)[0])


def _key(left, right, n) -> tuple:
    return tuple(sorted((int(a), int(b)) for a, b in zip(left[: n - 1], right[: n - 1])))


def bracket_tv(keys: Sequence[tuple], log_p: Dict[tuple, float]) -> float:
    """The TV estimate of the module docstring: ``keys`` the bracketings of K samples, ``log_p``
    log p(b | x) of (at least) each of them."""
    q = Counter(keys)
    K = len(keys)
    seen = sum(math.exp(log_p[b]) for b in q)
    return 0.5 * (sum(abs(c / K - math.exp(log_p[b])) for b, c in q.items()) + max(0.0, 1.0 - seen))


@functools.lru_cache(maxsize=8)
def _bracket_fns(max_len: int):
    lj = jax.jit(jax.vmap(bracket_log_joint, in_axes=(None, None, 0)))
    exact = jax.jit(lambda g, key, w, n, k: inside.sample(
        g, key, jnp.repeat(w[None], k, 0), jnp.repeat(n[None], k, 0)), static_argnums=(4,))
    marginal = jax.jit(lambda g, w, n: inside.log_marginal(g, w[None], n[None])[0])
    return lj, exact, marginal


def bracket_metrics(sample_trees, grammar, words: np.ndarray, lengths: np.ndarray, key,
                    samples: int, max_words: int, max_sentences: int) -> Dict[str, Any]:
    """{"bracket_tv", "bracket_tv_floor", "bracket_sentences", "bracket_samples"}: the mean over
    the first ``max_sentences`` sentences of 3..``max_words`` words of the bracketing TV of
    ``samples`` draws ``sample_trees(key, words int32[L], length int32[], k)`` -> Tree [k, ...]
    (None values when no sentence qualifies or p(x) is not exact for ``grammar``)."""
    pick = [i for i, n in enumerate(lengths) if 3 <= n <= max_words][:max_sentences]
    if not pick or not has_marginal(grammar) or samples < 1:
        return {"bracket_tv": None, "bracket_tv_floor": None, "bracket_sentences": 0,
                "bracket_samples": samples}
    lj, exact, marginal = _bracket_fns(words.shape[1])
    tvs, floors = [], []
    for i in pick:
        w, n = jnp.asarray(words[i]), jnp.asarray(lengths[i], jnp.int32)
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        log_px = float(marginal(grammar, w, n))
        sets = []
        for trees in (sample_trees(k1, w, n, samples), exact(grammar, k2, w, n, samples)):
            L, R = np.asarray(trees.left), np.asarray(trees.right)
            sets.append(([_key(L[j], R[j], int(lengths[i])) for j in range(samples)], trees))
        log_p: Dict[tuple, float] = {}
        for ks, trees in sets:  # all K trees at once: one static shape, no retrace per count
            vals = np.asarray(lj(grammar, w, trees)) - log_px
            for b, v in zip(ks, vals):
                log_p.setdefault(b, float(v))
        tvs.append(bracket_tv(sets[0][0], log_p))
        floors.append(bracket_tv(sets[1][0], log_p))
    return {"bracket_tv": float(np.mean(tvs)), "bracket_tv_floor": float(np.mean(floors)),
            "bracket_sentences": len(pick), "bracket_samples": samples}


# -- labelled trees (exact on both sides) ------------------------------------------------------
def labelled_metrics(env: ParseTree, policy, params, grammar, words: np.ndarray,
                     lengths: np.ndarray, max_words: int, max_states: int,
                     max_sentences: int) -> Dict[str, Any]:
    """{"exact_tv", "exact_kl" (KL(p || q)), "exact_kl_reverse" (KL(q || p)), "exact_sentences"}:
    the exact distances between the GFlowNet's terminal distribution q (policy ``policy`` with
    ``params`` on ``env``) and p(z | x) over labelled trees, by dynamic programming over every
    state, averaged over the first ``max_sentences`` sentences of 2..``max_words`` words whose
    state count is at most ``max_states`` (None values if there is none)."""
    pick = [i for i, n in enumerate(lengths) if 2 <= n <= max_words
            and state_count(int(n), env.n_nt) <= max_states][:max_sentences]
    if not pick:
        return {"exact_tv": None, "exact_kl": None, "exact_kl_reverse": None, "exact_sentences": 0}
    tv, kl, rkl = [], [], []
    for i in pick:
        n = int(lengths[i])
        small = ParseTree(n, env.n_nt)
        pair = _exact_pair(small, policy)
        cond = {"tokens": jnp.asarray(words[i]), "length": jnp.asarray(n, jnp.int32)}
        q, p = pair(params, grammar, _table(small, n), cond)
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        tv.append(0.5 * np.abs(p - q).sum())
        m = p > 0
        kl.append(float(np.sum(p[m] * (np.log(p[m]) - np.log(np.maximum(q[m], 1e-300))))))
        m = q > 0
        rkl.append(float(np.sum(q[m] * (np.log(q[m]) - np.log(np.maximum(p[m], 1e-300))))))
    return {"exact_tv": float(np.mean(tv)), "exact_kl": float(np.mean(kl)),
            "exact_kl_reverse": float(np.mean(rkl)), "exact_sentences": len(pick)}


def _cut_policy(policy, small: ParseTree):
    """(params, obs, ctx) -> PolicyOutput of ``policy`` on the action spaces of ``small`` (a
    ParseTree with fewer slots: its actions are a prefix of the full ones)."""
    A, Ab = small.n_actions, small.n_bwd_actions

    def apply(params, obs, ctx):
        out = policy.apply(params, obs, ctx)
        return PolicyOutput(out.fwd_logits[:A], out.bwd_logits[:Ab], out.log_flow)

    return apply


@functools.lru_cache(maxsize=32)
def _table(small: ParseTree, n: int):
    return metrics.transition_table(small, {"tokens": jnp.zeros((small.max_len,), jnp.int32),
                                            "length": jnp.asarray(n, jnp.int32)})


@functools.lru_cache(maxsize=16)
def _exact_pair(small: ParseTree, policy):
    """Jitted (params, grammar, table, cond) -> (GFlowNet terminal distribution, exact posterior)
    over the states of ``table`` (float[S] each, 0 at non-terminal states). ``cond`` is the
    sentence padded to the policy's full ``max_len`` (the encoder's shape), not to ``small``'s."""
    apply = _cut_policy(policy, small)
    lr = lambda gg, c, st: G.log_joint(gg, c["tokens"], small.tree(st))

    @jax.jit
    def pair(params, g, table, cond):
        ctx = policy.encode_cond(params, cond)
        q = metrics.terminal_distribution(small, apply, params, table, ctx)
        return q, metrics.target_distribution(small, lr, g, table, cond)

    return pair


def spans_of(trees: Tree, lengths: Sequence[int]) -> List[tuple]:
    """Host: each tree's bracketing as a sorted tuple of half-open spans."""
    L, R = np.asarray(trees.left), np.asarray(trees.right)
    return [_key(L[j], R[j], int(n)) for j, n in enumerate(lengths)]
