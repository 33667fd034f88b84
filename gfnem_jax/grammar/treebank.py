"""Real treebanks as grammar-induction corpora: readers that turn a treebank into the two files
``gfnem train grammar`` reads (``--corpus`` one sentence per line, ``--gold`` one Penn-bracketed
tree per line, leaves equal to the sentence's words).

Readers (each returns (sentences: list of word lists, gold: list of inclusive span lists)):
  read_ptb_split   the preprocessed Penn Treebank of Kim et al. (2019) as the official
                   GFlowNet-EM repository ships it (``grammars/data/ptb_cpcfg``): ``SPLIT.src`` (one
                   lower-cased, punctuation-free sentence per line) and ``SPLIT-trees.pkl`` (a
                   pickled list of span lists). The pickle is read by ``read_safe_pickle``, which
                   admits only lists, tuples, integers and strings (no class, no function: a
                   pickle that names one is refused before anything runs).
  read_conllu      a Universal Dependencies ``.conllu`` file: words lower-cased, punctuation
                   (UPOS PUNCT), multiword-token ranges and empty nodes dropped; the gold spans are
                   the projective dependency subtrees (the words a head dominates, when they are
                   contiguous after the drop).
  read_bracketed   a file of Penn-bracketed trees (a user's own treebank), words from the leaves.
Spans are inclusive word-index pairs [i, j] (``grammar.metrics``' convention).
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Dict, List, Sequence, Tuple

from gfnem_jax.grammar import corpus as C

Sentences = List[List[str]]
Spans = List[List[List[int]]]


class _Safe(pickle.Unpickler):
    def find_class(self, module, name):  # no class or function may be named
        raise pickle.UnpicklingError(f"it names {module}.{name}; only lists, tuples, integers "
                                     f"and strings are read")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent id")


def read_safe_pickle(path: str):
    """The object in pickle file ``path`` if it is built only of lists, tuples, ints and strings;
    ValueError naming the file otherwise (nothing it names is imported or called)."""
    try:
        with open(path, "rb") as f:
            obj = _Safe(io.BytesIO(f.read())).load()
    except FileNotFoundError:
        raise ValueError(f"treebank file {path!r} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as e:
        raise ValueError(f"treebank file {path!r} is not a pickle of span lists ({e})") from None

    def ok(x):
        if isinstance(x, (list, tuple)):
            return all(ok(y) for y in x)
        return isinstance(x, (int, str)) and not isinstance(x, bool)

    if not ok(obj):
        raise ValueError(f"treebank file {path!r} holds values other than lists, tuples, "
                         f"integers and strings")
    return obj


def read_ptb_split(folder: str, split: str) -> Tuple[Sentences, Spans]:
    """(sentences, gold spans) of ``folder/SPLIT.src`` and ``folder/SPLIT-trees.pkl``."""
    src = os.path.join(folder, f"{split}.src")
    sents = [l.split() for l in C.read_lines(src, "treebank sentences")]
    trees = read_safe_pickle(os.path.join(folder, f"{split}-trees.pkl"))
    if not isinstance(trees, list) or len(trees) != len(sents):
        raise ValueError(f"treebank {folder!r}: {split}-trees.pkl holds "
                         f"{len(trees) if isinstance(trees, list) else 'no list of'} trees for "
                         f"{len(sents)} sentences")
    gold = []
    for k, (s, spans) in enumerate(zip(sents, trees)):
        try:
            sp = [[int(i), int(j)] for i, j in spans]
        except (TypeError, ValueError):
            raise ValueError(f"treebank {folder!r}: tree {k + 1} of {split}-trees.pkl is not a "
                             f"list of (i, j) spans") from None
        if any(not 0 <= i <= j < len(s) for i, j in sp):
            raise ValueError(f"treebank {folder!r}: tree {k + 1} of {split}-trees.pkl has a span "
                             f"outside its {len(s)} words")
        gold.append(sp)
    return sents, gold


def read_conllu(path: str) -> Tuple[Sentences, Spans]:
    """(sentences, gold spans from projective dependency subtrees) of a CoNLL-U file."""
    sents, gold = [], []
    rows: List[List[str]] = []

    def flush(line_no):
        if not rows:
            return
        ids, heads, words = [], [], []
        for r in rows:
            if "-" in r[0] or "." in r[0]:
                continue
            try:
                ids.append(int(r[0])); heads.append(int(r[6]))
            except ValueError:
                raise ValueError(f"treebank {path!r}: the sentence ending at line {line_no} has a "
                                 f"token whose ID or HEAD is not an integer") from None
            words.append((r[1].lower(), r[3] == "PUNCT"))
        keep = [k for k, (_, p) in enumerate(words) if not p]
        pos = {ids[k]: q for q, k in enumerate(keep)}
        kids: Dict[int, List[int]] = {}
        for i, h in zip(ids, heads):
            kids.setdefault(h, []).append(i)
        spans = []
        for k in keep:
            stack, dom = [ids[k]], []
            while stack:
                i = stack.pop()
                if i in pos:
                    dom.append(pos[i])
                stack.extend(kids.get(i, ()))
            if len(dom) >= 1 and max(dom) - min(dom) + 1 == len(dom):
                spans.append([min(dom), max(dom)])
        n = len(keep)
        if n >= 1:
            sents.append([words[k][0].replace("(", "-lrb-").replace(")", "-rrb-") for k in keep])
            spans.append([0, n - 1])
            gold.append([list(s) for s in sorted({(i, j) for i, j in spans},
                                                 key=lambda s: (s[0], -s[1]))])
        rows.clear()

    no = 0
    try:
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    flush(no)
                elif not line.startswith("#"):
                    cols = line.split("\t")
                    if len(cols) != 10:
                        raise ValueError(f"treebank {path!r} line {no}: {len(cols)} tab-separated "
                                         f"columns, CoNLL-U has 10")
                    rows.append(cols)
            flush(no)
    except FileNotFoundError:
        raise ValueError(f"treebank file {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"treebank file {path!r} is not UTF-8 text") from None
    if not sents:
        raise ValueError(f"treebank {path!r} holds no sentence")
    return sents, gold


def read_bracketed(path: str) -> Tuple[Sentences, Spans]:
    """(sentences, spans) of a file of Penn-bracketed trees, one per line."""
    sents, gold = [], []
    for k, line in C.read_numbered(path, "treebank"):
        if not line:
            continue
        try:
            leaves, spans = C.parse_bracketed(line)
        except ValueError as e:
            raise ValueError(f"treebank {path!r} line {k}: {e}") from None
        sents.append(leaves)
        gold.append(spans)
    return sents, gold


def bracketed(words: Sequence[str], spans: Sequence[Sequence[int]]) -> str:
    """A Penn-bracketed line over ``words`` holding every span of the laminar family ``spans``
    (inclusive; the whole sentence added when missing), labels X."""
    n = len(words)
    ss = sorted({(int(i), int(j)) for i, j in spans} | {(0, n - 1)}, key=lambda s: (s[0], -s[1]))
    out: List[str] = []

    def emit(i, j, inner):
        out.append("(X")
        p = i
        while p <= j:
            sub = next((s for s in inner if s[0] == p and s != (i, j)), None)
            if sub is None:
                out.append(words[p])
                p += 1
            else:
                emit(sub[0], sub[1], [s for s in inner if sub[0] <= s[0] and s[1] <= sub[1]
                                      and s != sub])
                p = sub[1] + 1
        out.append(")")

    emit(0, n - 1, [s for s in ss if s != (0, n - 1)])
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def write(sentences: Sentences, gold: Spans, text_path: str, gold_path: str,
          max_len: int = 0) -> int:
    """Write the corpus (one sentence per line) and its gold trees (bracketed), keeping the
    sentences of 2..max_len words (all when max_len is 0). Returns the number written."""
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(text_path)), exist_ok=True)
    with open(text_path, "w", encoding="utf-8") as ft, open(gold_path, "w", encoding="utf-8") as fg:
        for s, sp in zip(sentences, gold):
            if len(s) < 2 or (max_len and len(s) > max_len):
                continue
            ft.write(" ".join(s) + "\n")
            fg.write(bracketed(s, sp) + "\n")
            n += 1
    return n
