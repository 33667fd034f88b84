"""Generated 28x28 "wires" images: a grid of cells joined by wires, with an exact likelihood.

The image (``size`` = 7 * ``cells`` pixels a side, 28 by default) is a ``cells x cells`` grid of
7x7 cells. Neighbouring cells are joined or not: a join is a 3-pixel-thick segment from one
cell's centre square to the other's. In each row of cells the ``cells - 1`` horizontal joins
are drawn as one full-length wire with probability ``q`` (``Q_WIRE``, all joins on); otherwise
each join is on by itself with probability ``p`` (``P_JOIN``). Columns likewise, independently. So

    p(x) = prod over rows and columns r of  P(j_r),
    P(j) = q [all of j on] + (1 - q) p^|j| (1 - p)^(len(j) - |j|),

where j_r are the joins of row (column) r, read off the pixels: every join has pixels that no
other join covers, so an image determines its joins and ``log_prob`` is exact (-inf for an
image that no join pattern draws). ``entropy()`` is the data's exact entropy in nats, the NLL a
perfect model reaches (the "floor" of the discrete-VAE table).

Why for the discrete VAE: with a 4x4 code grid each code covers one cell, but what a cell shows
depends on joins shared with its neighbours and, through whole wires, on cells across the image.
A code grid that explains an image must agree between neighbours, so the posterior over codes is
coupled; and the no-latent model (independent pixels) is far from the floor, so a model that
does not use its codes shows. Every image is drawn from ``numpy.random.default_rng([seed, i])``:
the same set everywhere, nothing downloaded.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

CELL = 7  # pixels per cell side
P_JOIN = 0.2  # a join on by itself
Q_WIRE = 0.3  # a whole row's (column's) joins on together


def _joins_prob(j: np.ndarray, p: float = P_JOIN, q: float = Q_WIRE) -> float:
    """P(j) of one row's (or column's) joins j (bool[cells - 1])."""
    k, n = int(np.sum(j)), len(j)
    return q * float(k == n) + (1 - q) * p ** k * (1 - p) ** (n - k)


def _draw_joins(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float32[size, size] from joins h bool[cells, cells - 1] (row i, between columns j and
    j + 1) and v bool[cells - 1, cells] (between rows i and i + 1, column j)."""
    cells = h.shape[0]
    img = np.zeros((cells * CELL, cells * CELL), np.float32)
    c = CELL // 2  # a cell's centre offset
    for i, j in zip(*np.nonzero(h)):
        img[i * CELL + c - 1:i * CELL + c + 2, j * CELL + c - 1:(j + 1) * CELL + c + 2] = 1
    for i, j in zip(*np.nonzero(v)):
        img[i * CELL + c - 1:(i + 1) * CELL + c + 2, j * CELL + c - 1:j * CELL + c + 2] = 1
    return img


def _sample(rng: np.random.Generator, cells: int):
    def lines():
        out = np.zeros((cells, cells - 1), bool)
        for r in range(cells):
            out[r] = True if rng.random() < Q_WIRE else rng.random(cells - 1) < P_JOIN
        return out
    h = lines()
    v = lines().T  # columns: row r of the draw is column r
    return h, v


def read_joins(img: np.ndarray, cells: int = 4):
    """(h, v) joins of an image, read at each join's own pixels (the boundary between the two
    cells' centres, which no other join covers)."""
    c = CELL // 2
    h = np.zeros((cells, cells - 1), bool)
    v = np.zeros((cells - 1, cells), bool)
    for i in range(cells):
        for j in range(cells - 1):
            h[i, j] = img[i * CELL + c, (j + 1) * CELL - 1] > 0.5
    for i in range(cells - 1):
        for j in range(cells):
            v[i, j] = img[(i + 1) * CELL - 1, j * CELL + c] > 0.5
    return h, v


def log_prob(img: np.ndarray, cells: int = 4) -> float:
    """Exact log p(x) of one image (float[size, size]); -inf if no join pattern draws it."""
    h, v = read_joins(img, cells)
    if not np.array_equal(_draw_joins(h, v), (np.asarray(img) > 0.5).astype(np.float32)):
        return -math.inf
    return float(sum(math.log(_joins_prob(r)) for r in h) + sum(math.log(_joins_prob(c)) for c in v.T))


def entropy(cells: int = 4) -> float:
    """The data's exact entropy in nats: 2 * cells * H(P), H(P) over the 2^(cells - 1) join
    patterns of one row (enumerated)."""
    ps = [_joins_prob(np.array(j, bool)) for j in itertools.product([0, 1], repeat=cells - 1)]
    return 2 * cells * float(-sum(p * math.log(p) for p in ps))


def wires(n_train: int = 4000, n_test: int = 500, cells: int = 4, seed: int = 0):
    """(train float32[n_train, size, size], test float32[n_test, size, size]), values {0, 1},
    size = 7 * cells."""
    if cells < 2:
        raise ValueError(f"cells must be >= 2, got {cells}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    x = np.stack([_draw_joins(*_sample(np.random.default_rng([seed, i]), cells))
                  for i in range(n_train + n_test)])
    return x[:n_train], x[n_train:]
