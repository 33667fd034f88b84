"""Synthetic 2-D densities quantised to Gray-coded bits (EB-GFN / Gibbs-with-gradients benchmarks).

Densities (the usual toy set): 2spirals, 8gaussians, circles, moons, pinwheel, swissroll,
checkerboard, drawn with an explicitly seeded ``numpy.random.Generator`` (no global state).

Quantisation of a point (u, v) with ``bits`` bits per coordinate (d = 2 * bits):
    n = clip(floor((c + R) / (2 R) * 2^bits), 0, 2^bits - 1)      R = RANGE = 4 by default
    g = n XOR (n >> 1)                                            (Gray code)
and the bits of g, most significant first, coordinate u first. ``decode`` maps bits back to the
centre of their cell. Neighbouring cells differ in one bit, so a one-bit move is a small step.
Points outside [-R, R)^2 land in the border cells.

The half-width R sets the cell size 2R / 2^bits, so NLLs on two grids differ by the log of the
cells' area ratio: NLL on R = NLL on R' + 2 log(R' / R) (smaller cells, higher NLL). The EB-GFN paper's code quantises on R = its data's max |coordinate| + 2
(``PAPER_RANGE``: its 5,000 samples of numpy RandomState(1)), with a sign bit and a Gray-coded
magnitude; that labelling is this one's mirrored with fixed bits flipped, so on the same R the two
pose the same problem and NLLs compare directly (``resolve_range(0, name)``).

User data: ``load_npy(path)`` reads an ``.npy`` of {0, 1} vectors (uint8[n, d]).
``entropy_floor`` estimates the entropy of the discretised density (nats), the lowest expected
held-out NLL any model can reach.
"""
from __future__ import annotations

import math
import os

import numpy as np

NAMES = ("2spirals", "8gaussians", "circles", "moons", "pinwheel", "swissroll", "checkerboard")
RANGE = 4.0
MAX_D = 64
# R of the EB-GFN code's quantisation (f_scale + 1 in its synthetic_data.OnlineToyDataset), from its
# own generators with numpy RandomState(1) and 5,000 samples (sklearn for circles, moons, swissroll)
PAPER_RANGE = {"2spirals": 5.480986, "8gaussians": 6.194777, "circles": 5.780578,
               "moons": 5.669443, "pinwheel": 5.946060, "swissroll": 5.265939,
               "checkerboard": 5.999416}


def resolve_range(r: float, name: str) -> float:
    """The half-width R for a setting: R itself, or for 0 the EB-GFN paper's R for density
    ``name``."""
    if r == 0:
        if name not in PAPER_RANGE:
            raise ValueError(f"the paper's range is defined for {', '.join(PAPER_RANGE)}, not {name!r}")
        return PAPER_RANGE[name]
    r = float(r)
    if not r > 0:
        raise ValueError(f"the grid's half-width must be > 0, got {r}")
    return r


def _rng(seed_or_rng):
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def sample_2d(name: str, n: int, seed) -> np.ndarray:
    """float32[n, 2] points of the named density (``seed``: int or numpy Generator)."""
    if name not in NAMES:
        raise ValueError(f"data must be one of {', '.join(NAMES)} or a .npy path, got {name!r}")
    r = _rng(seed)
    if name == "swissroll":
        t = 1.5 * np.pi * (1 + 2 * r.random(n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + r.normal(size=(n, 2))
        x = x / 5.0
    elif name == "circles":
        big = r.random(n) < 0.5
        ang = 2 * np.pi * r.random(n)
        rad = np.where(big, 1.0, 0.5)
        x = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1) + 0.08 * r.normal(size=(n, 2))
        x = 3.0 * x
    elif name == "moons":
        upper = r.random(n) < 0.5
        t = np.pi * r.random(n)
        x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1),
                     np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
        x = x + 0.1 * r.normal(size=(n, 2))
        x = 2.0 * x + np.array([-1.0, -0.2])
    elif name == "8gaussians":
        s = 1.0 / math.sqrt(2)
        centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
        x = 0.5 * r.normal(size=(n, 2)) + centers[r.integers(0, 8, n)]
        x = x / 1.414
    elif name == "pinwheel":
        k, rate = 5, 0.25
        labels = r.integers(0, k, n)
        f = r.normal(size=(n, 2)) * np.array([0.3, 0.1]) + np.array([1.0, 0.0])
        ang = 2 * np.pi * labels / k + rate * np.exp(f[:, 0])
        c, s_ = np.cos(ang), np.sin(ang)
        x = 2.0 * np.stack([c * f[:, 0] - s_ * f[:, 1], s_ * f[:, 0] + c * f[:, 1]], 1)
    elif name == "2spirals":
        m = np.sqrt(r.random(n)) * 540 * (2 * np.pi) / 360
        arm = r.random(n) < 0.5
        xy = np.stack([-np.cos(m) * m + 0.5 * r.random(n), np.sin(m) * m + 0.5 * r.random(n)], 1)
        x = np.where(arm[:, None], xy, -xy) / 3.0 + 0.1 * r.normal(size=(n, 2))
    else:  # checkerboard
        x1 = 4 * r.random(n) - 2
        x2 = r.random(n) - 2 * r.integers(0, 2, n) + np.floor(x1) % 2
        x = 2.0 * np.stack([x1, x2], 1)
    return x.astype(np.float32)


# -- Gray-code quantisation ------------------------------------------------------------------------
def to_gray(n: np.ndarray) -> np.ndarray:
    return n ^ (n >> 1)


def from_gray(g: np.ndarray) -> np.ndarray:
    n = g.copy()
    shift = g >> 1
    while np.any(shift):
        n ^= shift
        shift >>= 1
    return n


def _int_bits(v: np.ndarray, bits: int) -> np.ndarray:
    return ((v[..., None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)


def _bits_int(b: np.ndarray) -> np.ndarray:
    bits = b.shape[-1]
    return (b.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(-1)


def encode(points: np.ndarray, bits: int, r: float = RANGE) -> np.ndarray:
    """uint8[n, 2 * bits]: Gray-coded cells of float points[n, 2] on [-r, r)^2 (module docstring)."""
    if not 1 <= bits <= 31:
        raise ValueError(f"bits must be in [1, 31], got {bits}")
    m = 2 ** bits
    cell = np.floor((np.asarray(points, np.float64) + r) / (2 * r) * m).astype(np.int64)
    g = to_gray(np.clip(cell, 0, m - 1))
    return np.concatenate([_int_bits(g[:, 0], bits), _int_bits(g[:, 1], bits)], 1)


def cells(x: np.ndarray) -> np.ndarray:
    """int64[n, 2]: the grid cells (0 .. 2^bits - 1 per coordinate) of bit vectors x[n, 2 * bits]."""
    bits = x.shape[-1] // 2
    return np.stack([from_gray(_bits_int(x[..., :bits])), from_gray(_bits_int(x[..., bits:]))], -1)


def decode(x: np.ndarray, r: float = RANGE) -> np.ndarray:
    """float32[n, 2]: the centres of the cells of bit vectors x[n, 2 * bits] on [-r, r)^2."""
    bits = x.shape[-1] // 2
    return (-r + (cells(x) + 0.5) * (2 * r) / 2 ** bits).astype(np.float32)


def make_data(name: str, bits: int, n: int, seed, r: float = RANGE) -> np.ndarray:
    """uint8[n, 2 * bits]: n quantised samples of the named density on [-r, r)^2."""
    return encode(sample_2d(name, n, seed), bits, r)


def entropy_floor(name: str, bits: int, seed, n: int = 4_000_000, chunk: int = 1_000_000,
                  r: float = RANGE) -> float:
    """Plug-in entropy (nats) of the discretised density from n fresh samples.

    Its bias is about -(occupied cells - 1) / (2 n) nats (a slight underestimate).
    """
    rng = _rng(seed)
    m = 2 ** bits
    counts = np.zeros(m * m, np.int64)
    done = 0
    while done < n:
        k = min(chunk, n - done)
        c = cells(make_data(name, bits, k, rng, r))
        counts += np.bincount(c[:, 0] * m + c[:, 1], minlength=m * m)
        done += k
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def empirical_entropy(x: np.ndarray) -> float:
    """Entropy (nats) of the empirical distribution of the rows of x[n, d]."""
    _, c = np.unique(np.asarray(x), axis=0, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


# -- user data and splits --------------------------------------------------------------------------
def check_binary(x: np.ndarray, name: str = "data", max_d: int = MAX_D) -> np.ndarray:
    """Validate an array of {0, 1} vectors and return it as uint8[n, d] (one-line ValueErrors)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d] of 0/1 values, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one vector of length >= 1, got shape {x.shape}")
    if x.shape[1] > max_d:
        raise ValueError(f"{name} has d={x.shape[1]} bits per vector; at most {max_d} are allowed")
    if x.dtype == bool:
        x = x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.number) or not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name} must contain only 0 and 1 values (dtype {x.dtype})")
    return x.astype(np.uint8)


def load_npy(path: str, max_d: int = MAX_D) -> np.ndarray:
    """uint8[n, d] from an .npy file of {0, 1} vectors."""
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - report any reader error in one line
        raise ValueError(f"data file {path!r} is not a readable .npy array ({type(e).__name__})") from None
    return check_binary(x, f"data file {path!r}", max_d)


def split(x: np.ndarray, test_fraction: float, seed) -> tuple:
    """(train, test): a seeded random permutation, the last ceil(f n) rows for testing."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = x.shape[0]
    n_test = max(1, int(math.ceil(test_fraction * n)))
    if n_test >= n:
        raise ValueError(f"data has {n} vectors: too few to hold out a test set")
    perm = _rng(seed).permutation(n)
    return x[perm[: n - n_test]], x[perm[n - n_test:]]
