"""Corpora for grammar induction: a synthetic corpus from a known PCFG, and user text files.

A ``Corpus`` holds sentences padded to int32[N, max_len] (padding = word 0), lengths int32[N],
the vocabulary (index 0 is ``<unk>``), gold spans (one list of INCLUSIVE [i, j] pairs per
sentence, or None) and ``stats``: counts of what was read and dropped.

User files: one whitespace-tokenised sentence per line (empty lines are skipped); gold trees in
Penn-style brackets, one per line in the same order, e.g. ``(S (NP (DT the) (NN cat)) (VP sat))``:
labels are ignored, every leaf is a token (punctuation kept), every bracket gives the span of its
leaves. Sentences outside 2..max_len words are dropped (with their gold trees) and counted.
Vocabulary: ``<unk>`` plus the ``vocab_size - 1`` most frequent words of the training file (ties
broken by first occurrence); other words map to ``<unk>`` and are counted.

Synthetic: ``synthetic_grammar`` draws a PCFG from a key; ``synthetic`` samples sentences with
their gold trees from it (top-down, jitted, rejecting trees of more than max_len words) and
reports the generating grammar's exact NLL per token on each split.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import re
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.grammar import inside
from gfnem_jax.grammar import rules as gm

UNK = "<unk>"


@dataclasses.dataclass
class Corpus:
    words: np.ndarray  # int32[N, max_len]
    lengths: np.ndarray  # int32[N]
    vocab: List[str]
    gold: Optional[List[List[List[int]]]]
    stats: Dict[str, int]
    tokens: Optional[List[List[str]]] = None  # the kept sentences as strings

    def __len__(self):
        return int(self.lengths.shape[0])


# -- files -------------------------------------------------------------------------------------
def read_numbered(path: str, what: str) -> List[Tuple[int, str]]:
    """(1-based line number, stripped text) of every line of a text file, empty lines included;
    ValueError naming ``what`` and ``path`` when it cannot be read or holds no sentence."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(k + 1, l.strip()) for k, l in enumerate(f)]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path!r} cannot be read ({e.__class__.__name__}: {e})") from None
    if not any(l for _, l in lines):
        raise ValueError(f"{what} {path!r} is empty (need one sentence per line)")
    return lines


def read_lines(path: str, what: str) -> List[str]:
    """The non-empty lines of a text file, stripped (``read_numbered``)."""
    return [l for _, l in read_numbered(path, what) if l]


def parse_bracketed(line: str) -> Tuple[List[str], List[List[int]]]:
    """(leaf tokens, inclusive spans of every bracket with >= 1 leaf) of one Penn-style tree."""
    toks = re.findall(r"\(|\)|[^\s()]+", line)
    leaves: List[str] = []
    spans: List[List[int]] = []
    stack: List[int] = []
    pos = 0
    while pos < len(toks):
        t = toks[pos]
        if t == "(":
            stack.append(len(leaves))
            if pos + 1 < len(toks) and toks[pos + 1] not in ("(", ")"):
                pos += 1  # the label (ignored)
        elif t == ")":
            if not stack:
                raise ValueError("unbalanced brackets")
            start = stack.pop()
            if len(leaves) > start:
                spans.append([start, len(leaves) - 1])
        else:
            leaves.append(t)
        pos += 1
    if stack:
        raise ValueError("unbalanced brackets")
    if not leaves:
        raise ValueError("no words")
    return leaves, spans


def build_vocab(sentences: Sequence[Sequence[str]], vocab_size: int) -> List[str]:
    counts = collections.Counter(w for s in sentences for w in s)
    first: Dict[str, int] = {}
    for s in sentences:
        for w in s:
            first.setdefault(w, len(first))
    words = sorted((w for w in counts if w != UNK), key=lambda w: (-counts[w], first[w]))
    return [UNK] + words[: max(vocab_size - 1, 0)]


def encode(sentences: Sequence[Sequence[str]], vocab: Sequence[str], max_len: int,
           unknown: str = "unk", lines: Optional[Sequence[int]] = None,
           where: str = "corpus") -> Tuple[np.ndarray, np.ndarray, int]:
    """(int32[N, max_len] padded with 0, int32[N] lengths, number of unknown tokens).

    unknown: "unk" maps unknown words to <unk> (word 0 when the vocabulary has no <unk>);
    "error" raises ValueError naming ``where``, the word and its line (``lines[b]``: the line
    number of sentence b; default b + 1)."""
    index = {w: i for i, w in enumerate(vocab)}
    unk = index.get(UNK, 0)
    X = np.zeros((len(sentences), max_len), np.int32)
    n_unk = 0
    for b, s in enumerate(sentences):
        for p, w in enumerate(s):
            if w not in index:
                if unknown == "error":
                    line = lines[b] if lines is not None else b + 1
                    raise ValueError(f"{where} line {line}: the word {w!r} is not in the "
                                     f"vocabulary (which has no {UNK})")
                n_unk += 1
            X[b, p] = index.get(w, unk)
    return X, np.asarray([len(s) for s in sentences], np.int32), n_unk


def load(path: str, gold: Optional[str] = None, max_len: int = 20,
         vocab: Optional[Sequence[str]] = None, vocab_size: int = 10000,
         unknown: str = "unk") -> Corpus:
    """Read a text corpus (and optionally its gold trees); filter lengths; map to the vocabulary.

    vocab: the vocabulary to use (validation / test files); None builds it from this file.
    """
    numbered = [(k, l) for k, l in read_numbered(path, "corpus") if l]
    sents = [l.split() for _, l in numbered]
    trees = None
    if gold is not None:
        lines = read_lines(gold, "gold trees")
        if len(lines) != len(sents):
            raise ValueError(f"gold trees {gold!r} has {len(lines)} trees but corpus {path!r} has "
                             f"{len(sents)} sentences")
        trees = []
        for k, (line, s) in enumerate(zip(lines, sents)):
            try:
                leaves, spans = parse_bracketed(line)
            except ValueError as e:
                raise ValueError(f"gold trees {gold!r} line {k + 1}: {e}") from None
            if leaves != s:
                raise ValueError(f"gold trees {gold!r} line {k + 1}: its {len(leaves)} leaves do not "
                                 f"match the {len(s)} words of sentence {k + 1}")
            trees.append(spans)
    keep = [k for k, s in enumerate(sents) if 2 <= len(s) <= max_len]
    stats = {"sentences_read": len(sents), "sentences_kept": len(keep),
             "dropped_too_short": sum(len(s) < 2 for s in sents),
             "dropped_too_long": sum(len(s) > max_len for s in sents)}
    if not keep:
        raise ValueError(f"corpus {path!r}: no sentence has 2..{max_len} words (max_len)")
    kept = [sents[k] for k in keep]
    if vocab is None:
        vocab = build_vocab(kept, vocab_size)
        stats["word_types_dropped"] = max(len({w for s in kept for w in s}) - (len(vocab) - 1), 0)
    X, L, n_unk = encode(kept, vocab, max_len, unknown, [numbered[k][0] for k in keep],
                         f"corpus {path!r}")
    stats["tokens"] = int(L.sum())
    stats["unk_tokens"] = n_unk
    return Corpus(X, L, list(vocab), None if trees is None else [trees[k] for k in keep], stats, kept)


# -- synthetic ---------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def synthetic_grammar(key, nt: int = 5, pt: int = 10, v: int = 50, p_leaf=(0.4, 0.8),
                      rule_scale: float = 2.0):
    """A PCFG (log-prob pytree) drawn from a key. Nonterminal A's children are preterminals with
    probability p_leaf[A] (linear from p_leaf[0] for A = 0 to p_leaf[1] for A = NT-1; the root
    prefers low A, so sentences are not mostly two words); inside each (NT|PT) x (NT|PT) block
    the rules are peaked (softmax of rule_scale * N(0,1)) and so are emissions (softmax of
    3 N(0,1)), so that trees are identifiable."""
    k1, k2, k3 = jax.random.split(key, 3)
    s = nt + pt
    pl = jnp.linspace(p_leaf[0], p_leaf[1], nt)[:, None, None]  # [NT, 1, 1]
    is_nt = jnp.arange(s) < nt
    logits = rule_scale * jax.random.normal(k2, (nt, s, s))
    binary = jnp.full((nt, s, s), -jnp.inf)
    for a in (True, False):
        for b in (True, False):
            m = (is_nt[:, None] == a) & (is_nt[None, :] == b)
            lp = jax.nn.log_softmax(jnp.where(m[None], logits, -jnp.inf).reshape(nt, -1), -1)
            mass = (pl if not a else 1 - pl) * (pl if not b else 1 - pl)
            binary = jnp.where(m[None], lp.reshape(nt, s, s) + jnp.log(mass), binary)
    root = jax.nn.log_softmax(-0.7 * jnp.arange(nt) + 0.5 * jax.random.normal(k1, (nt,)))
    return {"root": root, "binary": binary,
            "emit": jax.nn.log_softmax(3.0 * jax.random.normal(k3, (pt, v)), -1)}


def _generate_one(grammar, key, max_len: int):
    """Top-down sampling; returns (pre-order symbols int32[2 max_len], words int32[max_len],
    number of words, ok) where a symbol >= 0 is a nonterminal and -1 - w a word w."""
    nt = grammar["root"].shape[0]
    s = grammar["binary"].shape[1]
    T = 2 * max_len - 1
    cap = max_len + 2
    flat = grammar["binary"].reshape(nt, -1)
    stack = jnp.zeros((cap,), jnp.int32).at[0].set(jax.random.categorical(key, grammar["root"]))

    def body(t, c):
        stack, top, syms, words, nw, ok = c
        k = jax.random.fold_in(key, t + 1)
        live = top > 0
        X = stack[jnp.maximum(top - 1, 0)]
        top = jnp.where(live, top - 1, top)
        is_nt = X < nt
        bc = jax.random.categorical(k, flat[jnp.minimum(X, nt - 1)])
        w = jax.random.categorical(k, grammar["emit"][jnp.clip(X - nt, 0, s - nt - 1)])
        syms = syms.at[t].set(jnp.where(live, jnp.where(is_nt, X, -1 - w), 0))
        push = live & is_nt
        ok = ok & ~(push & (top + 2 > cap)) & ~(live & ~is_nt & (nw >= max_len))
        stack = stack.at[jnp.minimum(top, cap - 1)].set(jnp.where(push, bc % s, stack[jnp.minimum(top, cap - 1)]))
        stack = stack.at[jnp.minimum(top + 1, cap - 1)].set(
            jnp.where(push, bc // s, stack[jnp.minimum(top + 1, cap - 1)]))
        top = jnp.where(push, jnp.minimum(top + 2, cap), top)
        words = words.at[jnp.minimum(nw, max_len - 1)].set(jnp.where(live & ~is_nt, w, words[jnp.minimum(nw, max_len - 1)]))
        nw = nw + (live & ~is_nt)
        return stack, top, syms, words, nw, ok

    c = (stack, jnp.ones((), jnp.int32), jnp.zeros((T,), jnp.int32), jnp.zeros((max_len,), jnp.int32),
         jnp.zeros((), jnp.int32), jnp.ones((), bool))
    stack, top, syms, words, nw, ok = jax.lax.fori_loop(0, T, body, c)
    return syms, words, nw, ok & (top == 0) & (nw >= 2) & (nw <= max_len)


def _spans_from_preorder(syms: np.ndarray, nt: int):
    spans, labels = [], []
    pos = [0, 0]  # symbol cursor, word cursor

    def rec():
        x = int(syms[pos[0]])
        pos[0] += 1
        if x < 0:
            pos[1] += 1
            return
        start = pos[1]
        slot = len(spans)
        spans.append(None)
        labels.append(x)
        rec()
        rec()
        spans[slot] = [start, pos[1] - 1]

    rec()
    return spans, labels


@functools.lru_cache(maxsize=8)
def synthetic(seed: int = 0, n_train: int = 2000, n_valid: int = 500, max_len: int = 20,
              nt: int = 5, pt: int = 10, v: int = 50):
    """(train Corpus, valid Corpus, generating grammar). Each split's ``stats`` holds
    ``true_nll_per_token``: the exact NLL per token of the distribution the sentences are drawn
    from, the generating grammar conditioned on 2 <= n <= max_len (draws of other lengths are
    rejected): -sum [log p(x) - log P(2 <= n <= max_len)] / sum n on that split,
    and Corpus.gold holds the generating trees' spans. Cached per arguments (do not mutate)."""
    key = jax.random.PRNGKey(seed)
    g = synthetic_grammar(jax.random.fold_in(key, 0), nt, pt, v)
    gen = jax.jit(jax.vmap(lambda k: _generate_one(g, k, max_len)))
    need = n_train + n_valid
    got: List[Tuple[np.ndarray, np.ndarray, int]] = []
    rnd = 0
    while len(got) < need:
        keys = jax.random.split(jax.random.fold_in(key, 1 + rnd), 4096)
        syms, words, nw, ok = jax.device_get(gen(keys))
        got += [(syms[i], words[i], int(nw[i])) for i in np.flatnonzero(ok)]
        rnd += 1
        if rnd > 100:
            raise ValueError(f"synthetic corpus: too few sentences of 2..{max_len} words (max_len)")
    vocab = [UNK] + [f"w{i}" for i in range(1, v)]  # word 0 of the grammar is rendered as <unk>
    got = got[:need]
    X = np.stack([w for _, w, _ in got]).astype(np.int32)
    L = np.asarray([n for _, _, n in got], np.int32)
    X = np.where(np.arange(max_len)[None] < L[:, None], X, 0).astype(np.int32)
    logp = _corpus_log_probs(g, X, L, max_len)
    out = []
    for lo, hi in ((0, n_train), (n_train, need)):
        x, l = X[lo:hi], L[lo:hi]
        gold = [_spans_from_preorder(s, nt)[0] for s, _, _ in got[lo:hi]]
        stats = {"sentences_read": hi - lo, "sentences_kept": hi - lo, "dropped_too_short": 0,
                 "dropped_too_long": 0, "tokens": int(l.sum()), "unk_tokens": 0,
                 "true_nll_per_token": float(-np.sum(logp[lo:hi], dtype=np.float64) / l.sum())}
        out.append(Corpus(x, l, vocab, gold, stats, [[vocab[i] for i in x[b, :l[b]]] for b in range(len(l))]))
    return out[0], out[1], g


def _corpus_log_probs(grammar, X: np.ndarray, L: np.ndarray, max_len: int, chunk: int = 1024):
    """float64[B]: log p(x) - log P(2 <= n <= max_len) of each sentence, the exact log-probability
    under the distribution a rejection sampler of 2..max_len words draws from (inside, in chunks of
    ``chunk`` sentences; an NCFG through its parent annotation)."""
    lm = jax.jit(inside.log_marginal)
    logp = np.concatenate([np.asarray(lm(grammar, X[i:i + chunk], L[i:i + chunk]), np.float64)
                           for i in range(0, len(L), chunk)])
    log_accept = jax.nn.logsumexp(jax.jit(inside.length_log_probs, static_argnums=1)(grammar, max_len))
    return logp - float(log_accept)


def synthetic_ncfg_grammar(key, nt: int = 5, pt: int = 10, v: int = 50, rule_scale: float = 4.0):
    """A non-context-free grammar (log-prob pytree, ``binary`` [NT+1, NT, S, S]): the rules of a
    nonterminal depend on its parent's label (index NT = the root's "parent"), each parent label
    drawing its own peaked rule table as ``synthetic_grammar`` does; root and emissions shared.

    ``rule_scale`` (logit scale of the rule tables) is 4 by default, twice the PCFG's, so that the
    parent's label matters to p(x): at 2 the CFG that averages each rule over its parent's label
    (with the corpus's parent frequencies) is only 0.037 nats/token worse than the NCFG (seed 0,
    max_len 10), at 4 it is 0.19 worse (measured with the exact NCFG inside)."""
    base = synthetic_grammar(jax.random.fold_in(key, 0), nt, pt, v)
    tables = [synthetic_grammar(jax.random.fold_in(key, 1 + p), nt, pt, v, (0.4, 0.8),
                                rule_scale)["binary"] for p in range(nt + 1)]
    return {"root": base["root"], "binary": jnp.stack(tables), "emit": base["emit"]}


@functools.lru_cache(maxsize=4)
def synthetic_ncfg(seed: int = 0, n_train: int = 2000, n_valid: int = 500, max_len: int = 20,
                   nt: int = 5, pt: int = 10, v: int = 50, rule_scale: float = 4.0):
    """(train Corpus, valid Corpus, generating NCFG): sentences and gold trees drawn by
    ``grammar.rules.sample`` from ``synthetic_ncfg_grammar`` (``rule_scale``: its logit scale).
    ``stats["true_nll_per_token"]`` is the exact NLL per token of the corpus's distribution (the
    grammar conditioned on 2 <= n <= max_len, as ``synthetic``), by inside on the parent
    annotation (None when ``nt`` is too large to annotate), and
    ``stats["true_log_joint_per_token"]`` is -sum log p(x, z_gold) / tokens (an upper bound)."""
    key = jax.random.PRNGKey(seed)
    g = synthetic_ncfg_grammar(jax.random.fold_in(key, 0), nt, pt, v, rule_scale)
    gen = jax.jit(jax.vmap(lambda k: gm.sample(g, k, max_len)))
    lj = jax.jit(jax.vmap(lambda w, t: gm.log_joint(g, w, t)))
    need = n_train + n_valid
    words, trees, ljs = [], [], []
    for rnd in range(100):
        w, t, ok = gen(jax.random.split(jax.random.fold_in(key, 1 + rnd), 4096))
        keep = np.flatnonzero(np.asarray(ok))
        words.append(np.asarray(w)[keep])
        trees.append(jax.tree.map(lambda a: np.asarray(a)[keep], t))
        ljs.append(np.asarray(lj(w, t))[keep])
        if sum(len(x) for x in words) >= need:
            break
    else:
        raise ValueError(f"synthetic corpus: too few sentences of 2..{max_len} words (max_len)")
    X = np.concatenate(words)[:need].astype(np.int32)
    T = jax.tree.map(lambda *a: np.concatenate(a)[:need], *trees)
    LJ = np.concatenate(ljs)[:need]
    L = np.asarray(T.length, np.int32)
    vocab = [UNK] + [f"w{i}" for i in range(1, v)]
    logp = _corpus_log_probs(g, X, L, max_len) if gm.annotatable(nt) else None
    out = []
    for lo, hi in ((0, n_train), (n_train, need)):
        gold = [[[int(T.left[b, m]), int(T.right[b, m]) - 1] for m in range(L[b] - 1)]
                for b in range(lo, hi)]
        l = L[lo:hi]
        stats = {"sentences_read": hi - lo, "sentences_kept": hi - lo, "dropped_too_short": 0,
                 "dropped_too_long": 0, "tokens": int(l.sum()), "unk_tokens": 0,
                 "true_nll_per_token": (None if logp is None else
                                        float(-logp[lo:hi].sum(dtype=np.float64) / l.sum())),
                 "true_log_joint_per_token": float(-LJ[lo:hi].sum(dtype=np.float64) / l.sum())}
        out.append(Corpus(X[lo:hi], l, vocab, gold, stats,
                          [[vocab[i] for i in X[b, :L[b]]] for b in range(lo, hi)]))
    return out[0], out[1], g
