"""Parse trees: the latent z of a sentence, in static shapes (``Tree``), and host converters.

A tree of a sentence of n words (2 <= n <= max_len) is binary; its n leaves are the words and
its n-1 internal nodes carry nonterminal labels. M = max_len - 1 node slots; slot t < n-1 holds
one internal node, slots >= n-1 are padding (zeros):
  left  int32[M]   first word of the node's span
  split int32[M]   first word of its right child (left child = [left, split), right = [split, right))
  right int32[M]   one past the last word (spans are half-open [left, right))
  label int32[M]   nonterminal label in [0, NT)
  length int32[]   n
Node order is free for every consumer (children are found by span matching, ``children``);
producers emit a bottom-up order (children before parents), e.g. the order of merges: start from
``empty_tree`` and call ``merge(tree, t, left, split, right, label)`` for t = 0..n-2.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Tree(NamedTuple):
    left: jax.Array
    split: jax.Array
    right: jax.Array
    label: jax.Array
    length: jax.Array


# -- trees -------------------------------------------------------------------------------------
def empty_tree(max_len: int, length) -> Tree:
    z = jnp.zeros((max_len - 1,), jnp.int32)
    return Tree(z, z, z, z, jnp.asarray(length, jnp.int32))


def merge(tree: Tree, t, left, split, right, label) -> Tree:
    """Write node slot t: the merge of roots [left, split) and [split, right) under ``label``."""
    return Tree(tree.left.at[t].set(left), tree.split.at[t].set(split),
                tree.right.at[t].set(right), tree.label.at[t].set(label), tree.length)


def tree_from_spans(spans: Sequence[Sequence[int]], labels: Optional[Sequence[int]], length: int,
                    max_len: int) -> Tree:
    """Host converter: n-1 spans as INCLUSIVE word indices [i, j] (JSON form) -> ``Tree``.

    labels default to 0. Raises ValueError unless the spans form a binary tree over n words.
    Nodes come out sorted by width (a bottom-up order).
    """
    n = int(length)
    if not 2 <= n <= max_len:
        raise ValueError(f"length must be in [2, {max_len}], got {n}")
    spans = [(int(i), int(j) + 1) for i, j in spans]
    labels = [0] * len(spans) if labels is None else [int(a) for a in labels]
    if len(spans) != n - 1 or len(labels) != n - 1 or len(set(spans)) != n - 1:
        raise ValueError(f"a binary tree over {n} words needs {n - 1} distinct spans, got {len(spans)}")
    order = sorted(range(n - 1), key=lambda t: (spans[t][1] - spans[t][0], spans[t][0]))
    have = set(spans)
    L, K, R, A = (np.zeros(max_len - 1, np.int32) for _ in range(4))
    for slot, t in enumerate(order):
        i, j = spans[t]
        if not 0 <= i < j <= n or j - i < 2:
            raise ValueError(f"span {[i, j - 1]} is not a span of >= 2 words in a sentence of {n}")
        ks = [k for k in range(i + 1, j) if (k - i == 1 or (i, k) in have) and (j - k == 1 or (k, j) in have)]
        if len(ks) != 1:
            raise ValueError(f"spans do not form a binary tree (node {[i, j - 1]})")
        L[slot], K[slot], R[slot], A[slot] = i, ks[0], j, labels[t]
    if (0, n) not in have:
        raise ValueError("spans do not form a binary tree (no span covers the whole sentence)")
    return Tree(*(jnp.asarray(a) for a in (L, K, R, A)), jnp.asarray(n, jnp.int32))


def tree_spans(tree: Tree):
    """Host: the tree's spans as a list of INCLUSIVE [i, j] pairs, and their labels (slot order)."""
    n = int(tree.length)
    L, R, A = (np.asarray(a) for a in (tree.left, tree.right, tree.label))
    return [[int(L[t]), int(R[t]) - 1] for t in range(n - 1)], [int(A[t]) for t in range(n - 1)]


def stack_trees(trees: Sequence[Tree]) -> Tree:
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def children(tree: Tree):
    """For every slot: index of the left / right child node (-1 for a leaf) and of the parent (-1 root)."""
    M = tree.left.shape[0]
    valid = jnp.arange(M) < tree.length - 1
    same_l = (tree.left[None, :] == tree.left[:, None]) & (tree.right[None, :] == tree.split[:, None])
    same_r = (tree.left[None, :] == tree.split[:, None]) & (tree.right[None, :] == tree.right[:, None])
    same_l = same_l & valid[None, :]
    same_r = same_r & valid[None, :]
    lc = jnp.where(same_l.any(1), jnp.argmax(same_l, 1), -1)
    rc = jnp.where(same_r.any(1), jnp.argmax(same_r, 1), -1)
    is_child = ((lc[None, :] == jnp.arange(M)[:, None]) | (rc[None, :] == jnp.arange(M)[:, None]))
    is_child = is_child & valid[None, :]
    par = jnp.where(is_child.any(1), jnp.argmax(is_child, 1), -1)
    return lc, rc, par, valid


# -- enumeration (tiny instances: tests, exact metrics) ----------------------------------------
def bracketings(i: int, j: int):
    """All binary bracketings of words [i, j) as lists of (left, split, right) nodes, bottom-up."""
    if j - i == 1:
        return [[]]
    out = []
    for k in range(i + 1, j):
        for a in bracketings(i, k):
            for b in bracketings(k, j):
                out.append(a + b + [(i, k, j)])
    return out


def all_trees(n: int, nt: int, max_len: int) -> Tree:
    """Every labelled tree over n words: Catalan(n-1) bracketings x NT^(n-1) labellings, stacked."""
    L, K, R, A = [], [], [], []
    for br in bracketings(0, n):
        for lab in np.ndindex(*([nt] * (n - 1))):
            pad = [(0, 0, 0)] * (max_len - n)
            nodes = br + pad
            L.append([a for a, _, _ in nodes]); K.append([b for _, b, _ in nodes])
            R.append([c for _, _, c in nodes]); A.append(list(lab) + [0] * (max_len - n))
    arr = [jnp.asarray(np.asarray(x, np.int32).reshape(len(L), max_len - 1)) for x in (L, K, R, A)]
    return Tree(*arr, jnp.full((len(L),), n, jnp.int32))
