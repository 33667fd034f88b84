"""Bottom-up parse trees over a sentence: the latent space of GFlowNet-EM for grammar induction.

A sentence of n words is padded to ``max_len`` = L; the condition is
``{"tokens": int32[L], "length": int32[]}``. The state is the ordered list of the current roots
(a forest covering words 0..n-1 left to right). At s_0 every word is a root; a forward action
merges two adjacent roots under a nonterminal label; after n-1 merges one root is left and the
state is terminal. Sentences of every length share the same static shapes (masks do the rest).

State (``ParseState``, one sentence; slot q < r is the q-th root from the left, slots >= r are
padding with every field -1):
  start, end  int32[L]    inclusive word span of each root
  label       int32[L]    nonterminal of the root, -1 for a single word
  split       int32[L]    gap index of the root's top node (-1 for a word); gap g lies between
                          words g and g+1
  node_label  int32[L-1]  per gap g: label of the internal node whose children meet at gap g
  node_start, node_end    int32[L-1]  that node's span (-1: not built)
  node_left, node_right   int32[L-1]  gap of its left / right child (-1: the child is a word)
  n, r        int32[]     sentence length, number of roots
Every binary tree over n leaves has exactly one internal node per gap, so the per-gap arrays hold
the whole tree at the terminal state (``tree``, in ``gfnem_jax.grammar.tree.Tree`` form;
``from_tree`` goes back), and any partial forest on the way.

Actions: forward a = p * NT + A (p < L-1, A < NT) merges roots p and p+1 under label A; legal iff
p < r - 1. Backward b = p < L splits root p (legal iff p < r and root p is not a word) into its
two children, read back from the per-gap arrays. ``backward_action(s, a) = a // NT``,
``forward_action(s', b) = b * NT + label[b]``.

Policy view: ``observe(s)`` = {"start", "end", "label": int32[L], "mask": bool[L] (q < r)}; at
step t at most L - t slots are live (``grammar.rollout`` shrinks to them).
Rewards: ``log_reward(grammar, cond, s)`` = log p(x, z) (``grammar.log_joint``, params = the
grammar's log-prob pytree); ``partial_log_reward`` = the rules fixed so far (forward-looking flows).

Enumeration (tiny sentences): the reachable states of one sentence are found by breadth-first
search with ``step`` and ordered by an integer key of the per-gap arrays (a mixed-radix code of
(start, end, label) per gap, a bijection on the forests of one sentence); ``state_index`` is a
``searchsorted`` into the sorted keys.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.envs.base import Environment
from gfnem_jax.grammar import rules as gm
from gfnem_jax.grammar.tree import Tree


class ParseState(NamedTuple):
    start: jax.Array
    end: jax.Array
    label: jax.Array
    split: jax.Array
    node_label: jax.Array
    node_start: jax.Array
    node_end: jax.Array
    node_left: jax.Array
    node_right: jax.Array
    n: jax.Array
    r: jax.Array


def make_cond(tokens, max_len: int) -> dict:
    """A condition from one sentence (a list of token ids), padded with 0 to ``max_len``."""
    toks = list(tokens)
    if not 0 <= len(toks) <= max_len:
        raise ValueError(f"sentence length must be in 0..max_len={max_len}, got {len(toks)}")
    pad = np.zeros((max_len,), np.int32)
    pad[: len(toks)] = toks
    return {"tokens": jnp.asarray(pad), "length": jnp.asarray(len(toks), jnp.int32)}


@dataclasses.dataclass(frozen=True)
class ParseTree(Environment):
    """Bottom-up labelled binary parse trees over a sentence of at most ``max_len`` words."""

    max_len: int = 20
    n_nt: int = 30

    def __post_init__(self):
        if int(self.max_len) < 2:
            raise ValueError(f"ParseTree: max_len must be >= 2, got {self.max_len}")
        if int(self.n_nt) < 1:
            raise ValueError(f"ParseTree: n_nt must be >= 1, got {self.n_nt}")

    # -- sizes --------------------------------------------------------------------------------
    @property
    def n_actions(self) -> int:
        return (self.max_len - 1) * self.n_nt

    @property
    def n_bwd_actions(self) -> int:
        return self.max_len

    @property
    def max_steps(self) -> int:
        return self.max_len - 1

    # -- dynamics -----------------------------------------------------------------------------
    def init(self, cond=None) -> ParseState:
        L = self.max_len
        if cond is None:
            raise ValueError("ParseTree.init needs a condition {'tokens', 'length'} (a sentence)")
        n = jnp.clip(jnp.asarray(cond["length"], jnp.int32), 0, L)
        q = jnp.arange(L, dtype=jnp.int32)
        word = jnp.where(q < n, q, -1)
        neg = jnp.full((L,), -1, jnp.int32)
        gneg = jnp.full((L - 1,), -1, jnp.int32)
        return ParseState(word, word, neg, neg, gneg, gneg, gneg, gneg, gneg, n, n)

    def forward_mask(self, s):
        p = jnp.arange(self.max_len - 1)
        return jnp.repeat(p < s.r - 1, self.n_nt)

    def backward_mask(self, s):
        q = jnp.arange(self.max_len)
        return (q < s.r) & (s.split >= 0)

    def step(self, s: ParseState, action) -> ParseState:
        L = self.max_len
        a = jnp.asarray(action, jnp.int32)
        p = jnp.clip(a // self.n_nt, 0, L - 2)
        lab = a % self.n_nt
        ok = (a >= 0) & (a < self.n_actions) & (p < s.r - 1)
        g = jnp.clip(s.end[p], 0, L - 2)
        q = jnp.arange(L)

        def merge(x, new):  # slot p <- new, slots > p shift left by one, last slot padding
            shifted = jnp.concatenate([x[1:], jnp.full((1,), -1, x.dtype)])
            return jnp.where(q < p, x, jnp.where(q == p, new, shifted))

        t = ParseState(
            merge(s.start, s.start[p]), merge(s.end, s.end[p + 1]), merge(s.label, lab),
            merge(s.split, g),
            s.node_label.at[g].set(lab), s.node_start.at[g].set(s.start[p]),
            s.node_end.at[g].set(s.end[p + 1]), s.node_left.at[g].set(s.split[p]),
            s.node_right.at[g].set(s.split[p + 1]), s.n, s.r - 1)
        return jax.tree.map(lambda new, old: jnp.where(ok, new, old), t, s)

    def backward_step(self, s: ParseState, bwd_action) -> ParseState:
        L = self.max_len
        b = jnp.asarray(bwd_action, jnp.int32)
        p = jnp.clip(b, 0, L - 2)
        g = jnp.clip(s.split[p], 0, L - 2)
        ok = (b >= 0) & (b < s.r) & (b < L - 1) & (s.split[p] >= 0)
        lg, rg = s.node_left[g], s.node_right[g]
        child_label = lambda c: jnp.where(c >= 0, s.node_label[jnp.maximum(c, 0)], -1)
        q = jnp.arange(L)

        def unmerge(x, left, right):  # slot p -> (left, right), slots > p shift right by one
            shifted = jnp.concatenate([x[:1], x[:-1]])
            return jnp.where(q < p, x, jnp.where(q == p, left, jnp.where(q == p + 1, right, shifted)))

        clear = lambda x: x.at[g].set(-1)
        t = ParseState(
            unmerge(s.start, s.start[p], g + 1), unmerge(s.end, g, s.end[p]),
            unmerge(s.label, child_label(lg), child_label(rg)), unmerge(s.split, lg, rg),
            clear(s.node_label), clear(s.node_start), clear(s.node_end), clear(s.node_left),
            clear(s.node_right), s.n, s.r + 1)
        return jax.tree.map(lambda new, old: jnp.where(ok, new, old), t, s)

    def backward_action(self, s, action):
        return jnp.clip(jnp.asarray(action, jnp.int32) // self.n_nt, 0, self.max_len - 2)

    def forward_action(self, s, bwd_action):
        p = jnp.clip(jnp.asarray(bwd_action, jnp.int32), 0, self.max_len - 2)
        return p * self.n_nt + jnp.maximum(s.label[p], 0)

    def is_terminal(self, s):
        return s.r <= 1

    def is_initial(self, s):
        return s.r == s.n

    # -- what the policy sees -----------------------------------------------------------------
    def observe(self, s: ParseState) -> dict:
        """Root slots: start, end, label int32[L] (-1 at padding) and mask bool[L] (q < r)."""
        return {"start": s.start, "end": s.end, "label": s.label,
                "mask": jnp.arange(self.max_len) < s.r}

    def features(self, s):
        raise ValueError("ParseTree has a structured observation: use observe(state)")

    def tree(self, s: ParseState) -> Tree:
        """The internal nodes built so far as a ``gfnem_jax.grammar.tree.Tree`` (node slot g =
        the node splitting at gap g: left = start, split = g + 1, right = end + 1, half-open;
        zeros where gap g is not built). The whole tree at a terminal state."""
        built = s.node_label >= 0
        g = jnp.arange(self.max_len - 1, dtype=jnp.int32)
        z = lambda x: jnp.where(built, x, 0).astype(jnp.int32)
        return Tree(z(s.node_start), z(g + 1), z(s.node_end + 1), z(s.node_label), s.n)

    def from_tree(self, tree: Tree) -> ParseState:
        """The terminal state of a complete ``grammar.Tree`` (any node order; sleep phase, data)."""
        L = self.max_len
        n = jnp.asarray(tree.length, jnp.int32)
        valid = jnp.arange(L - 1) < n - 1
        gap = jnp.where(valid, tree.split - 1, L - 1)  # out of range -> dropped by the scatter

        def child_gap(lo, hi):  # gap of the node with span [lo, hi) (-1 if a word or none)
            hit = valid[None, :] & (tree.left[None, :] == lo[:, None]) & (tree.right[None, :] == hi[:, None])
            return jnp.where(hit.any(1) & (hi - lo > 1), tree.split[jnp.argmax(hit, 1)] - 1, -1)

        put = lambda x: jnp.full((L - 1,), -1, jnp.int32).at[gap].set(x.astype(jnp.int32), mode="drop")
        nl, ns, ne = put(tree.label), put(tree.left), put(tree.right - 1)
        left, right = put(child_gap(tree.left, tree.split)), put(child_gap(tree.split, tree.right))
        is_root = valid & (tree.left == 0) & (tree.right == n)
        rt = jnp.argmax(is_root)
        one = lambda v: jnp.full((L,), -1, jnp.int32).at[0].set(v)
        return ParseState(one(0), one(n - 1), one(tree.label[rt]), one(tree.split[rt] - 1),
                          nl, ns, ne, left, right, n, jnp.ones((), jnp.int32))

    def terminal_value(self, s):
        """int32[3, L-1]: per gap, the built node's (start, end inclusive, label); -1 if none."""
        return jnp.stack([s.node_start, s.node_end, s.node_label])

    # -- rewards: log p(x, z) under a grammar (params = the grammar's log-prob pytree) ---------
    def log_reward(self, params, cond, state):
        """log p_theta(x, z) = grammar.log_joint(params, cond["tokens"], tree(state)) (terminal
        states of sentences of >= 2 words)."""
        return gm.log_joint(params, cond["tokens"], self.tree(state))

    def partial_log_reward(self, params, cond, s: ParseState) -> jax.Array:
        """g(s): log-probabilities of the rules already fixed by the forest (forward-looking flow).

        A node's rule score is that of ``grammar.log_joint`` (preterminals of word children summed
        out). PCFG: every built node counts, its children being fixed when it is built. NCFG (rules
        conditioned on the parent's label): a built node counts once its parent is built (or it
        is the root of a terminal state). The root rule log p(S -> A) counts at terminal states,
        so g(s_0) = 0 and g(terminal) = log p(x, z) exactly.
        """
        counts, root = self._counted(params, s)
        return root + jnp.sum(jnp.where(counts, self._node_scores(params, cond, s), 0.0))

    def partial_log_reward_path(self, params, cond, states: ParseState) -> jax.Array:
        """float[T+1]: ``partial_log_reward`` at every state of one forward trajectory (leaves
        [T+1, ...], the terminal state repeated after termination), reusing what a merge leaves
        unchanged: a node's score is fixed once it counts (its children, and for the NCFG its
        parent, never change afterwards), so every node is scored once, in the last state, and
        each state sums the scores of the nodes it counts (O(L^2) per state instead of the
        O(L PT^2) of scoring its forest again). Equal to the per-state values on every state up
        to the last (float rounding: the same terms summed in the same order)."""
        final = jax.tree.map(lambda x: x[-1], states)
        score = self._node_scores(params, cond, final)
        counts, root = jax.vmap(lambda s: self._counted(params, s))(states)
        return root + jnp.sum(jnp.where(counts, score[None, :], 0.0), axis=-1)

    def _counted(self, params, s: ParseState):
        """(bool[L-1] the nodes whose rule score g(s) counts, float[] the root term)."""
        L = self.max_len
        built = s.node_label >= 0
        lab = jnp.maximum(s.node_label, 0)
        if params["binary"].ndim == 4:
            has_par, _ = self._parents(s)
            counts = built & (has_par | ((s.node_start == 0) & (s.node_end == s.n - 1)))
        else:
            counts = built
        root = jnp.where(self.is_terminal(s) & (s.n >= 2),
                         params["root"][lab[jnp.clip(s.split[0], 0, L - 2)]], 0.0)
        return counts, root

    def _parents(self, s: ParseState):
        """(bool[L-1] node has a built parent, int[L-1] its parent's node index)."""
        L = self.max_len
        built = s.node_label >= 0
        gaps = jnp.arange(L - 1)
        is_kid = built[None, :] & ((s.node_left[None, :] == gaps[:, None]) |
                                   (s.node_right[None, :] == gaps[:, None]))  # [child, parent]
        return is_kid.any(1), jnp.argmax(is_kid, 1)

    def _node_scores(self, params, cond, s: ParseState) -> jax.Array:
        """float[L-1]: every node slot's rule score in ``s`` (meaningful where the node counts)."""
        g_ = params
        nt = g_["root"].shape[-1]
        L = self.max_len
        lab = jnp.maximum(s.node_label, 0)
        words = cond["tokens"]
        rule = g_["binary"]
        if rule.ndim == 4:
            has_par, par = self._parents(s)
            rule = rule[jnp.where(has_par, lab[par], nt), lab]
        else:
            rule = rule[lab]
        e_l = g_["emit"][:, words[jnp.maximum(s.node_start, 0)]].T  # [L-1, PT]
        e_r = g_["emit"][:, words[jnp.maximum(s.node_end, 0)]].T
        B = lab[jnp.maximum(s.node_left, 0)]
        C = lab[jnp.maximum(s.node_right, 0)]
        m = jnp.arange(L - 1)
        nn_ = rule[m, B, C]
        ln = jax.nn.logsumexp(rule[m, nt:, C] + e_l, axis=-1)
        nl = jax.nn.logsumexp(rule[m, B, nt:] + e_r, axis=-1)
        ll = jax.nn.logsumexp(rule[:, nt:, nt:] + e_l[:, :, None] + e_r[:, None, :], axis=(-2, -1))
        leaf_l, leaf_r = s.node_left < 0, s.node_right < 0
        return jnp.where(leaf_l, jnp.where(leaf_r, ll, ln), jnp.where(leaf_r, nl, nn_))

    # -- enumeration (tiny sentences) ---------------------------------------------------------
    def _radix(self) -> np.ndarray:
        L, K = self.max_len, self.n_nt
        digits = [1 + K * (g + 1) * (L - 1 - g) for g in range(L - 1)]
        if float(np.prod(np.asarray(digits, np.float64))) >= 2.0 ** 31:
            raise ValueError(f"ParseTree enumeration: max_len={L}, n_nt={K} is too large to index "
                             "(keep max_len * n_nt tiny, e.g. max_len <= 6)")
        return np.concatenate([[1], np.cumprod(digits[:-1])]).astype(np.int64)

    def state_key(self, s: ParseState) -> jax.Array:
        """int32 code of the per-gap arrays: digit_g = 0 if gap g is not built, else
        1 + label + NT * ((start) * (L-1-g) + (end - g - 1))."""
        L, K = self.max_len, self.n_nt
        g = jnp.arange(L - 1)
        inner = jnp.maximum(s.node_start, 0) * (L - 1 - g) + jnp.maximum(s.node_end - g - 1, 0)
        digit = jnp.where(s.node_label >= 0, 1 + s.node_label + K * inner, 0)
        mult = jnp.asarray(self._radix(), jnp.int32)
        return jnp.sum(digit * mult).astype(jnp.int32)

    def num_states(self, cond=None) -> int:
        return int(_enumerate(self, _length(self, cond))[1].shape[0])

    def all_states(self, cond=None) -> ParseState:
        states, _ = _enumerate(self, _length(self, cond))
        return jax.tree.map(jnp.asarray, states)

    def state_index(self, s, cond=None):
        keys = jnp.asarray(_enumerate(self, _length(self, cond))[1])
        return jnp.searchsorted(keys, self.state_key(s)).astype(jnp.int32)

    def terminal_indices(self, cond=None) -> jax.Array:
        states, _ = _enumerate(self, _length(self, cond))
        return jnp.asarray(np.nonzero(states.r <= 1)[0])


def _length(env: ParseTree, cond) -> int:
    if cond is None:
        raise ValueError("ParseTree enumeration needs the sentence (cond)")
    n = int(np.asarray(cond["length"]))
    if not 0 <= n <= env.max_len:
        raise ValueError(f"sentence length must be in 0..max_len={env.max_len}, got {n}")
    return n


@functools.partial(jax.jit, static_argnums=0)
def _expand(env: ParseTree, frontier):
    acts = jnp.arange(env.n_actions)
    kids = jax.vmap(lambda s: jax.vmap(lambda a: env.step(s, a))(acts))(frontier)
    return kids, jax.vmap(env.forward_mask)(frontier), jax.vmap(jax.vmap(env.state_key))(kids)


@functools.partial(jax.jit, static_argnums=0)
def _keys(env: ParseTree, states):
    return jax.vmap(env.state_key)(states)


def _pow2(tree):
    """Pad the leading axis to a power of two (>= 8) by repeating row 0 (fewer recompiles)."""
    m = jax.tree.leaves(tree)[0].shape[0]
    size = max(8, 1 << (m - 1).bit_length())
    return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], size - m, 0)]), tree), m


@functools.lru_cache(maxsize=64)
def _enumerate(env: ParseTree, n: int):
    """(all states as a host ParseState of numpy arrays sorted by key, sorted int64 keys)."""
    env._radix()
    cond = {"tokens": jnp.zeros((env.max_len,), jnp.int32), "length": jnp.asarray(n, jnp.int32)}
    frontier = jax.tree.map(lambda a: np.asarray(a)[None], env.init(cond))
    levels = [frontier]
    for _ in range(max(n - 1, 0)):
        padded, m = _pow2(frontier)
        kids, mask, keys = jax.tree.map(lambda a: np.asarray(a)[:m], _expand(env, padded))
        flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), kids)
        keep = np.nonzero(mask.reshape(-1))[0]
        _, first = np.unique(keys.reshape(-1)[keep], return_index=True)
        frontier = jax.tree.map(lambda a: a[keep[first]], flat)
        levels.append(frontier)
    allst = jax.tree.map(lambda *xs: np.concatenate(xs), *levels)
    padded, m = _pow2(allst)
    keys = np.asarray(_keys(env, padded))[:m].astype(np.int64)
    order = np.argsort(keys, kind="stable")
    if np.unique(keys).shape[0] != keys.shape[0]:
        raise AssertionError("ParseTree: state keys collide")
    return jax.tree.map(lambda a: a[order], allst), keys[order]
