"""Grammars as latent variable models (Kim et al. 2019 form): rule tables and log p(x, z).

Grammar form. A start symbol S, NT nonterminals, PT preterminals (S_ = NT + PT symbols):
  S -> A (A < NT);  A -> B C (B, C in NT u PT; index < NT a nonterminal, >= NT a preterminal);
  T -> w (T a preterminal, w a word).
A grammar is a dict pytree of LOG-probabilities (each row a distribution):
  root   float[NT]                    log p(S -> A)
  binary float[NT, S_, S_]            log p(A -> B C)          (context-free, "PCFG")
         float[NT+1, NT, S_, S_]      log p(A -> B C | parent of A)  (NCFG; parent NT = the start)
  emit   float[PT, V]                 log p(T -> w)

Trees z are ``gfnem_jax.grammar.tree.Tree``s (static shapes, any node order).
Preterminals are not part of z: they are summed out inside the parent rule, so exactly
  log p(x, z) = log p(S -> A_root) + sum_nodes log r(node),
  r(A -> [i,k) [k,j)) = sum_{B', C'} p(A -> B' C') f_left(B') f_right(C'),
where for an internal child f(B') = 1[B' = its label], and for a one-word child at position i
f(T) = p(T -> x_i) summed over preterminals T (``log_joint``).
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.grammar.tree import Tree, children

TOL = 1e-4


def sizes(grammar):
    """(NT, PT, V) of a grammar pytree (PCFG or NCFG)."""
    nt = grammar["root"].shape[-1]
    pt, v = grammar["emit"].shape[-2:]
    return nt, pt, v


def is_ncfg(grammar) -> bool:
    return grammar["binary"].ndim == 4


# The largest NCFG handled exactly by parent annotation: (NT+1)*NT annotated nonterminals.
MAX_ANNOTATED = 512


def annotatable(nt: int, max_annotated: int = MAX_ANNOTATED) -> bool:
    """True when an NCFG with ``nt`` nonterminals is small enough for exact inference by
    ``parent_annotate`` ((NT+1)*NT <= max_annotated)."""
    return (nt + 1) * nt <= max_annotated


def parent_annotate(grammar, max_annotated: int = MAX_ANNOTATED):
    """The PCFG equivalent to an NCFG whose rules depend on the parent's label.

    Nonterminal A under parent P (P in 0..NT, NT = the root's parent) becomes the annotated symbol
    (P, A) = index P*NT + A, NT' = (NT+1)*NT; preterminals are unchanged (their emissions do not
    depend on the parent). Rules:
      root'(P, A) = root(A) if P = NT else -inf
      binary'[(P, A), B', C'] = binary[P, A, B, C] when each nonterminal child B' = (Q, B) has Q = A
                                (else -inf); preterminal children keep their index (shifted to NT'+T).
    Every NCFG tree z has exactly one annotated tree z' (label P*NT + A) with p'(x, z') = p(x, z)
    and every other annotated tree has probability 0, so the inside algorithm, Viterbi and exact
    posterior sampling on the result are exact for the NCFG (labels map back by ``% NT``).
    Cost: dense tables of NT'^3 entries, so NT is limited by ``max_annotated`` (ValueError beyond).
    A PCFG is returned unchanged.
    """
    if not is_ncfg(grammar):
        return grammar
    nt, pt, _ = sizes(grammar)
    if not annotatable(nt, max_annotated):
        raise ValueError(f"grammar: exact inference for an NCFG with nt={nt} nonterminals needs "
                         f"(nt+1)*nt = {(nt + 1) * nt} annotated nonterminals, more than "
                         f"max_annotated={max_annotated}; use sampling-based evaluation")
    b = grammar["binary"]  # [P, A, S, S]
    na = (nt + 1) * nt
    neg = jnp.asarray(-jnp.inf, b.dtype)
    ok = jnp.arange(nt + 1)[None, :] == jnp.arange(nt)[:, None]  # [A, Q]: child's parent is A
    nn = b[:, :, :nt, :nt][:, :, None, :, None, :]  # [P, A, 1, B, 1, C]
    m_nn = ok[None, :, :, None, None, None] & ok[None, :, None, None, :, None]
    nn = jnp.where(m_nn, nn, neg).reshape(na, na, na)
    nl = jnp.where(ok[None, :, :, None, None], b[:, :, None, :nt, nt:], neg).reshape(na, na, pt)
    ln = jnp.where(ok[None, :, None, :, None], b[:, :, nt:, None, :nt], neg).reshape(na, pt, na)
    ll = b[:, :, nt:, nt:].reshape(na, pt, pt)
    binary = jnp.concatenate([jnp.concatenate([nn, nl], 2), jnp.concatenate([ln, ll], 2)], 1)
    root = jnp.full((nt + 1, nt), neg).at[nt].set(grammar["root"]).reshape(na)
    return {"root": root, "binary": binary, "emit": grammar["emit"]}


# -- log p(x, z) -------------------------------------------------------------------------------
def log_joint(grammar, words: jax.Array, tree: Tree) -> jax.Array:
    """Exact log p(x, z) of one sentence (words int32[max_len], padded) and one tree (see module doc).

    PCFG or NCFG (binary with a leading parent axis; the root's parent is index NT). Preterminals
    are summed out inside the parent rule. Padding words / node slots are ignored.
    """
    nt, pt, _ = sizes(grammar)
    lc, rc, par, valid = children(tree)
    A = tree.label
    rule = grammar["binary"]
    if rule.ndim == 4:
        parent_label = jnp.where(par >= 0, A[jnp.maximum(par, 0)], nt)
        rule = rule[parent_label, A]  # [M, S, S]
    else:
        rule = rule[A]
    e_l = grammar["emit"][:, words[tree.left]].T  # [M, PT] emission of the left word
    e_r = grammar["emit"][:, words[jnp.maximum(tree.right - 1, 0)]].T
    B = A[jnp.maximum(lc, 0)]
    C = A[jnp.maximum(rc, 0)]
    m = jnp.arange(rule.shape[0])
    nn = rule[m, B, C]
    ln = jax.nn.logsumexp(rule[m, nt:, C] + e_l, axis=-1)  # left leaf, right internal
    nl = jax.nn.logsumexp(rule[m, B, nt:] + e_r, axis=-1)
    ll = jax.nn.logsumexp(rule[:, nt:, nt:] + e_l[:, :, None] + e_r[:, None, :], axis=(-2, -1))
    leaf_l, leaf_r = lc < 0, rc < 0
    score = jnp.where(leaf_l, jnp.where(leaf_r, ll, ln), jnp.where(leaf_r, nl, nn))
    is_root = valid & (tree.right - tree.left == tree.length)
    root = jnp.sum(jnp.where(is_root, grammar["root"][A], 0.0))
    return root + jnp.sum(jnp.where(valid, score, 0.0))


# -- random / uniform grammars -----------------------------------------------------------------
def random_grammar(key, nt: int, pt: int, v: int, scale: float = 1.0, ncfg: bool = False):
    """A grammar with log-probs log_softmax(scale * N(0, 1)) per row (tests, synthetic data)."""
    k1, k2, k3 = jax.random.split(key, 3)
    s = nt + pt
    shape = (nt + 1, nt, s * s) if ncfg else (nt, s * s)
    binary = jax.nn.log_softmax(scale * jax.random.normal(k2, shape), -1).reshape(shape[:-1] + (s, s))
    return {"root": jax.nn.log_softmax(scale * jax.random.normal(k1, (nt,))),
            "binary": binary,
            "emit": jax.nn.log_softmax(scale * jax.random.normal(k3, (pt, v)), -1)}


# -- files -------------------------------------------------------------------------------------
def validate(probs, name: str = "grammar") -> None:
    """Raise ValueError (one line) unless root/binary/emit are probability tables that agree."""
    for k in ("root", "binary", "emit"):
        if k not in probs:
            raise ValueError(f"{name}: missing array {k!r} (need root, binary, emit, vocab)")
    root, binary, emit = (np.asarray(probs[k], np.float64) for k in ("root", "binary", "emit"))
    if root.ndim != 1 or emit.ndim != 2 or binary.ndim != 3:
        raise ValueError(f"{name}: need root[NT], binary[NT, NT+PT, NT+PT], emit[PT, V]; got shapes "
                         f"{root.shape}, {binary.shape}, {emit.shape}")
    nt, (pt, v) = root.shape[0], emit.shape
    if binary.shape != (nt, nt + pt, nt + pt):
        raise ValueError(f"{name}: binary has shape {binary.shape}, expected {(nt, nt + pt, nt + pt)} "
                         f"from root[{nt}] and emit[{pt}, {v}]")
    if "vocab" in probs and len(probs["vocab"]) != v:
        raise ValueError(f"{name}: vocab has {len(probs['vocab'])} words but emit has {v} columns")
    for k, a, rows in (("root", root, root[None]), ("binary", binary, binary.reshape(nt, -1)),
                       ("emit", emit, emit)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: {k} holds NaN or infinite entries")
        if np.any(a < 0):
            raise ValueError(f"{name}: {k} holds negative entries (min {a.min():.3g})")
        dev = np.abs(rows.sum(-1) - 1.0)
        if np.any(dev > TOL):
            r = int(np.argmax(dev))
            raise ValueError(f"{name}: {k} row {r} sums to {rows[r].sum():.6g}, not 1 (tolerance {TOL})")


def save_npz(path: str, grammar, vocab: Sequence[str]) -> None:
    """Write a PCFG (log-prob pytree) as probabilities: root, binary, emit, vocab."""
    if is_ncfg(grammar):
        raise ValueError("grammar: only context-free grammars can be exported (got an NCFG)")
    probs = {k: np.exp(np.asarray(grammar[k], np.float64)) for k in ("root", "binary", "emit")}
    # renormalise in float64 so that the file passes validation exactly
    probs["root"] /= probs["root"].sum()
    nt = probs["root"].shape[0]
    b = probs["binary"].reshape(nt, -1)
    probs["binary"] = (b / b.sum(-1, keepdims=True)).reshape(probs["binary"].shape)
    probs["emit"] /= probs["emit"].sum(-1, keepdims=True)
    validate({**probs, "vocab": list(vocab)})
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, vocab=np.asarray(list(vocab), dtype=str), **probs)


def load_npz(path: str):
    """(grammar log-prob pytree float32, vocab list) from a validated .npz file; ValueError otherwise."""
    try:
        with np.load(path, allow_pickle=False) as f:
            probs = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        why = str(e).split(".")[0] if "pickle" not in str(e) else "not a zip archive of arrays"
        raise ValueError(f"grammar {path!r} is not a readable .npz file ({why})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as e:  # truncated or corrupted
        raise ValueError(f"grammar {path!r} is not a readable .npz file (truncated or corrupted: "
                         f"{str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
    if "vocab" not in probs:
        raise ValueError(f"grammar {path!r}: missing array 'vocab' (need root, binary, emit, vocab)")
    validate(probs, f"grammar {path!r}")
    with np.errstate(divide="ignore"):
        g = {k: jnp.asarray(np.log(np.asarray(probs[k], np.float64)), jnp.float32)
             for k in ("root", "binary", "emit")}
    return g, [str(w) for w in probs["vocab"]]


# -- ancestral sampling (sleep phase, synthetic non-context-free corpora) ---------------------
def sample(grammar, key, max_len: int):
    """One top-down draw (x, z) ~ p(x, z) of a PCFG or NCFG, jittable.

    Returns (words int32[max_len] (0-padded), ``Tree`` with node slots in pre-order, ok bool[]),
    ok False when the draw has more than ``max_len`` words or fewer than 2 (then discard it).
    The stack holds pending symbols with their parent's node and side; a popped nonterminal opens
    a node (left = the word cursor), a popped right child fixes its parent's split, and each
    node's right end is read back from its right child afterwards (children follow their parent
    in pre-order, so one reverse pass resolves them).
    """
    nt, pt, _ = sizes(grammar)
    S = nt + pt
    M = max_len - 1
    T = 2 * max_len - 1
    cap = max_len + 2
    ncfg = is_ncfg(grammar)
    k0 = jax.random.fold_in(key, 0)
    root = jax.random.categorical(k0, grammar["root"]).astype(jnp.int32)
    zi = lambda n: jnp.zeros((n,), jnp.int32)
    neg = lambda n: jnp.full((n,), -1, jnp.int32)
    # stack rows: symbol, parent node (-1 none), side (1 = right child)
    st_sym, st_par, st_side = zi(cap).at[0].set(root), neg(cap), zi(cap)

    def body(t, c):
        st_sym, st_par, st_side, top, cnt, pos, words, left, split, label, rcn, rcw, ok = c
        k = jax.random.fold_in(key, t + 1)
        live = top > 0
        i = jnp.maximum(top - 1, 0)
        X, par, side = st_sym[i], st_par[i], st_side[i]
        top = jnp.where(live, top - 1, top)
        pslot = jnp.clip(par, 0, M - 1)
        is_right = live & (side == 1) & (par >= 0)
        split = split.at[pslot].set(jnp.where(is_right, pos, split[pslot]))
        is_nt = X < nt
        # a preterminal emits a word at the cursor
        w = jax.random.categorical(k, grammar["emit"][jnp.clip(X - nt, 0, pt - 1)]).astype(jnp.int32)
        emit = live & ~is_nt
        wslot = jnp.clip(pos, 0, max_len - 1)
        words = words.at[wslot].set(jnp.where(emit & (pos < max_len), w, words[wslot]))
        rcw = rcw.at[pslot].set(jnp.where(emit & is_right, pos, rcw[pslot]))
        ok = ok & ~(emit & (pos >= max_len))
        # a nonterminal opens node cnt and pushes its children (right first, left on top)
        opens = live & is_nt
        kslot = jnp.clip(cnt, 0, M - 1)
        ok = ok & ~(opens & (cnt >= M)) & ~(opens & (top + 2 > cap))
        left = left.at[kslot].set(jnp.where(opens, pos, left[kslot]))
        label = label.at[kslot].set(jnp.where(opens, X, label[kslot]))
        rcn = rcn.at[pslot].set(jnp.where(opens & is_right, cnt, rcn[pslot]))
        pl = jnp.where(par >= 0, label[pslot], nt)
        rules = grammar["binary"][pl, jnp.minimum(X, nt - 1)] if ncfg else grammar["binary"][jnp.minimum(X, nt - 1)]
        bc = jax.random.categorical(jax.random.fold_in(k, 1), rules.reshape(-1)).astype(jnp.int32)
        Bsym, Csym = bc // S, bc % S
        a, b = jnp.minimum(top, cap - 1), jnp.minimum(top + 1, cap - 1)
        put = lambda arr, j, v: arr.at[j].set(jnp.where(opens, v, arr[j]))
        st_sym, st_par, st_side = put(st_sym, a, Csym), put(st_par, a, cnt), put(st_side, a, 1)
        st_sym, st_par, st_side = put(st_sym, b, Bsym), put(st_par, b, cnt), put(st_side, b, 0)
        top = jnp.where(opens, jnp.minimum(top + 2, cap), top)
        cnt = cnt + opens
        pos = pos + emit
        return st_sym, st_par, st_side, top, cnt, pos, words, left, split, label, rcn, rcw, ok

    c = (st_sym, st_par, st_side, jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32),
         jnp.zeros((), jnp.int32), zi(max_len), zi(M), zi(M), zi(M), neg(M), neg(M),
         jnp.ones((), bool))
    c = jax.lax.fori_loop(0, T, body, c)
    _, _, _, top, cnt, pos, words, left, split, label, rcn, rcw, ok = c

    def resolve(right, j):  # reverse pre-order: a right child node is resolved before its parent
        r = jnp.where(rcn[j] >= 0, right[jnp.maximum(rcn[j], 0)], rcw[j] + 1)
        return right.at[j].set(r), None

    right, _ = jax.lax.scan(resolve, zi(M), jnp.arange(M - 1, -1, -1))
    n = pos
    valid = jnp.arange(M) < n - 1
    tree = Tree(*(jnp.where(valid, a, 0) for a in (left, split, right, label)), n.astype(jnp.int32))
    ok = ok & (top == 0) & (n >= 2) & (n <= max_len) & (cnt == n - 1)
    return jnp.where(jnp.arange(max_len) < n, words, 0), tree, ok
