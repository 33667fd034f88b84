"""The generated 'wires' images: deterministic, drawn joins read back exactly, and the exact
likelihood and entropy checked by enumerating every join pattern of a small grid."""
import itertools
import math

import numpy as np
import pytest

from gfnem_jax.data import images, wires


def test_deterministic_binary_and_by_name():
    tr, te = wires.wires(n_train=50, n_test=10, seed=0)
    assert tr.shape == (50, 28, 28) and te.shape == (10, 28, 28) and tr.dtype == np.float32
    assert set(np.unique(tr)) <= {0.0, 1.0}
    np.testing.assert_array_equal(wires.wires(50, 3)[0], tr)  # image i from its own generator
    assert not np.array_equal(wires.wires(50, 10, seed=1)[0], tr)
    d = images.load("wires")
    assert d.train.shape == (4000, 28, 28) and d.test.shape == (500, 28, 28) and d.name == "wires"
    with pytest.raises(ValueError, match="cells must be >= 2"):
        wires.wires(cells=1)


def _all_patterns(cells):
    nh, nv = cells * (cells - 1), (cells - 1) * cells
    for bits in itertools.product([False, True], repeat=nh + nv):
        b = np.array(bits, bool)
        yield b[:nh].reshape(cells, cells - 1), b[nh:].reshape(cells - 1, cells)


@pytest.mark.parametrize("cells", [2, 3])
def test_exact_likelihood_by_enumeration(cells):
    """Every join pattern draws a distinct image, read back to its joins; the probabilities of
    all of them sum to 1 and their entropy is ``entropy(cells)``."""
    seen, total, ent = set(), 0.0, 0.0
    for h, v in _all_patterns(cells):
        img = wires._draw_joins(h, v)
        h2, v2 = wires.read_joins(img, cells)
        np.testing.assert_array_equal(h2, h)
        np.testing.assert_array_equal(v2, v)
        seen.add(img.tobytes())
        p = math.exp(wires.log_prob(img, cells))
        total += p
        ent -= p * math.log(p)
    assert len(seen) == 2 ** (2 * cells * (cells - 1))
    assert total == pytest.approx(1.0, abs=1e-12)
    assert ent == pytest.approx(wires.entropy(cells), abs=1e-10)


def test_samples_follow_the_law_and_non_images_are_impossible():
    tr, _ = wires.wires(n_train=4000, n_test=1)
    nll = np.array([-wires.log_prob(x) for x in tr])
    assert np.all(np.isfinite(nll))
    # the mean NLL of samples estimates the entropy (13.07 nats at 4x4)
    assert abs(nll.mean() - wires.entropy()) < 4 * nll.std() / math.sqrt(len(nll))
    # a whole wire is drawn far more often than three independent joins would be
    h = np.array([wires.read_joins(x)[0] for x in tr[:2000]])
    full = np.mean(np.all(h, axis=2))
    assert full == pytest.approx(wires.Q_WIRE + (1 - wires.Q_WIRE) * wires.P_JOIN ** 3, abs=0.03)
    bad = tr[0].copy()
    bad[0, 0] = 1.0  # a pixel no join covers
    assert wires.log_prob(bad) == -math.inf
