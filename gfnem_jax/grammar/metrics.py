"""Parsing metrics: per-token NLL and unlabelled span F1 (Kim et al. 2019 conventions).

Spans are INCLUSIVE word-index pairs [i, j]. Trivial spans (single words, i == j, and the whole
sentence [0, n-1]) are dropped from both the predicted and the gold sets before scoring.
  sentence F1: mean over sentences of 2PR / (P + R) (a sentence with no gold span has R = 1, and
               P = 1 if it also predicts none; so sentences of 2 words score 1);
  corpus F1:   true / false positives and false negatives pooled over the corpus, then 2PR / (P + R).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np


def nll_per_token(logp, lengths) -> float:
    """-sum_b log p(x_b) / sum_b n_b."""
    return float(-np.sum(np.asarray(logp, np.float64)) / np.sum(np.asarray(lengths, np.float64)))


def nontrivial(spans: Iterable[Sequence[int]], n: int) -> set:
    return {(int(i), int(j)) for i, j in spans if j > i and not (i == 0 and j == n - 1)}


def tree_spans_batch(tree) -> List[List[List[int]]]:
    """Host: spans (inclusive) of every tree of a batched ``Tree`` (leaves [B, ...])."""
    L, R, n = (np.asarray(a) for a in (tree.left, tree.right, tree.length))
    return [[[int(L[b, t]), int(R[b, t]) - 1] for t in range(int(n[b]) - 1)] for b in range(len(n))]


def span_f1(pred: Sequence[Iterable[Sequence[int]]], gold: Sequence[Iterable[Sequence[int]]],
            lengths: Sequence[int]) -> Dict[str, float]:
    """{"sentence_f1", "corpus_f1"} of predicted against gold span lists (one list per sentence)."""
    if not (len(pred) == len(gold) == len(lengths)):
        raise ValueError(f"pred, gold and lengths must have the same number of sentences, got "
                         f"{len(pred)}, {len(gold)}, {len(lengths)}")
    tp = fp = fn = 0
    f1s = []
    for p, g, n in zip(pred, gold, lengths):
        p, g = nontrivial(p, int(n)), nontrivial(g, int(n))
        o = len(p & g)
        tp, fp, fn = tp + o, fp + len(p) - o, fn + len(g) - o
        prec = o / len(p) if p else (1.0 if not g else 0.0)
        rec = o / len(g) if g else 1.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    corpus = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"sentence_f1": float(np.mean(f1s)) if f1s else 0.0, "corpus_f1": float(corpus)}


def right_branching(n: int) -> List[List[int]]:
    """Spans of the right-branching tree over n words: [i, n-1] for i = 0..n-2."""
    return [[i, n - 1] for i in range(n - 1)]


def left_branching(n: int) -> List[List[int]]:
    return [[0, j] for j in range(1, n)]
