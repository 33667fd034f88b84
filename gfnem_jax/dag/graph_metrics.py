"""Sample-based scores of a structure sampler against the true graph (for d too large to
enumerate): edge-marginal AUROC and expected structural Hamming distance.

* ``edge_frequencies``: the fraction of sampled graphs holding each edge, float[d, d].
* ``auroc``: the area under the ROC curve of those marginals as a classifier of the true edges
  over the d(d-1) ordered pairs (the Mann-Whitney statistic, ties counted 1/2); None when the
  true graph has no edge or every edge.
* ``shd``: the structural Hamming distance, the number of unordered pairs {i, j} whose edges
  differ (a missing, extra or reversed edge counts 1); ``expected_shd``: its mean over samples.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def edge_frequencies(graphs: np.ndarray) -> np.ndarray:
    """float64[d, d]: mean of the adjacencies graphs [n, d, d]."""
    return np.asarray(graphs, np.float64).mean(0)


def auroc(marginals: np.ndarray, true: np.ndarray) -> Optional[float]:
    """AUROC of ``marginals`` [d, d] against the edges of ``true`` [d, d], off the diagonal."""
    d = true.shape[0]
    off = ~np.eye(d, dtype=bool)
    s, y = np.asarray(marginals, np.float64)[off], np.asarray(true).astype(bool)[off]
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def shd(graphs: np.ndarray, true: np.ndarray) -> np.ndarray:
    """int[...]: structural Hamming distance of graphs [..., d, d] to ``true`` [d, d]."""
    diff = np.asarray(graphs).astype(bool) != np.asarray(true).astype(bool)
    pair = diff | np.swapaxes(diff, -1, -2)
    d = pair.shape[-1]
    return np.sum(pair & np.triu(np.ones((d, d), bool), 1), axis=(-2, -1))


def expected_shd(graphs: np.ndarray, true: np.ndarray) -> float:
    """Mean SHD of graphs [n, d, d] to ``true``."""
    return float(np.mean(shd(graphs, true)))
