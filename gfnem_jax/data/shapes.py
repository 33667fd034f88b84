"""Generated binary shape images (28x28 by default) with long-range structure, for the discrete VAE.

``shapes(n_train, n_test, size, seed)`` draws every image from ``numpy.random.default_rng([seed,
i])`` (i the image's index over train then test), so the set is the same on every machine and
nothing is downloaded. An image (float32[size, size] in {0, 1}) overlays 1 to 3 primitives, each
chosen uniformly among

  hline    a full-width horizontal bar, 2 pixels thick, at a random row;
  vline    a full-height vertical bar, 2 pixels thick, at a random column;
  rect     an axis-aligned rectangle outline (1 pixel) with sides of at least size / 3;
  cross    the two diagonals of a random square of side at least size / 2 (an X);
  disc     a filled disc of radius 3 .. size / 6;

then, with probability 1/2, mirrors the image's left half onto its right half (x[:, -j-1] =
x[:, j]). Bars, outlines and crosses span most of the image and the mirror couples its two
halves, so one code cell's content constrains cells far from it: the structure a factorised
posterior over a code grid cannot express, unlike 8x8 digits, whose 4x4 code grid is nearly
pixel-sized.
"""
from __future__ import annotations

import numpy as np

KINDS = ("hline", "vline", "rect", "cross", "disc")


def _draw(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.zeros((size, size), np.float32)
    rr, cc = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(1, 4))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if kind == "hline":
            r = int(rng.integers(1, size - 2))
            img[r:r + 2, :] = 1
        elif kind == "vline":
            c = int(rng.integers(1, size - 2))
            img[:, c:c + 2] = 1
        elif kind == "rect":
            lo = size // 3
            h, w = (int(rng.integers(lo, size - 1)) for _ in range(2))
            r, c = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            img[r, c:c + w] = img[r + h - 1, c:c + w] = 1
            img[r:r + h, c] = img[r:r + h, c + w - 1] = 1
        elif kind == "cross":
            s = int(rng.integers(size // 2, size))
            r, c = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            k = np.arange(s)
            img[r + k, c + k] = 1
            img[r + k, c + s - 1 - k] = 1
        else:  # disc
            rad = int(rng.integers(3, max(4, size // 6 + 1)))
            y, x = (int(rng.integers(rad, size - rad)) for _ in range(2))
            img[(rr - y) ** 2 + (cc - x) ** 2 <= rad * rad] = 1
    if rng.random() < 0.5:
        half = size // 2
        img[:, size - half:] = img[:, :half][:, ::-1]
    return img


def shapes(n_train: int = 4000, n_test: int = 500, size: int = 28, seed: int = 0):
    """(train float32[n_train, size, size], test float32[n_test, size, size]), values {0, 1}."""
    if size < 12:
        raise ValueError(f"size must be >= 12, got {size}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    x = np.stack([_draw(np.random.default_rng([seed, i]), size) for i in range(n_train + n_test)])
    return x[:n_train], x[n_train:]
