"""The generated 28x28 shapes data set and the .npy image loader (MNIST saved with np.save)."""
import numpy as np
import pytest

from gfnem_jax.data import images, shapes
from gfnem_jax.experiments import dvae


def test_shapes_deterministic_binary_and_long_range():
    tr, te = shapes.shapes(n_train=60, n_test=20, size=28, seed=0)
    assert tr.shape == (60, 28, 28) and te.shape == (20, 28, 28) and tr.dtype == np.float32
    assert set(np.unique(tr)) <= {0.0, 1.0}
    tr2, te2 = shapes.shapes(n_train=60, n_test=20, size=28, seed=0)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    # image i is drawn from its own generator: the first 60 images do not depend on n_test
    np.testing.assert_array_equal(shapes.shapes(60, 5)[0], tr)
    assert not np.array_equal(shapes.shapes(60, 20, seed=1)[0], tr)
    # long range: about half the images are left-right mirror images, far more than chance
    sym = np.mean([np.array_equal(x, x[:, ::-1]) for x in tr])
    assert 0.3 < sym < 0.9
    # and pixels far apart are correlated: full-length bars make the first and last column agree
    allx = np.concatenate([tr, te])
    a, b = allx[:, 5, 0], allx[:, 5, -1]
    assert np.corrcoef(a, b)[0, 1] > 0.5
    with pytest.raises(ValueError, match="size must be >= 12"):
        shapes.shapes(size=8)


def test_shapes_by_name_in_dvae_settings():
    d = images.load("shapes")
    assert d.train.shape == (4000, 28, 28) and d.test.shape == (500, 28, 28) and d.name == "shapes"
    train, test = dvae.load_data(dvae.DVAESettings(data="shapes", grid=7, n_test=50))
    assert train.shape == (4000, 28, 28) and test.shape == (50, 28, 28)


@pytest.mark.parametrize("flat", [False, True])
def test_npy_of_28x28_images(tmp_path, flat):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 28, 28)).astype(np.uint8)
    p = tmp_path / "mnist.npy"
    np.save(p, a.reshape(20, 784) if flat else a)
    d = images.load(str(p))
    assert d.train.shape == (18, 28, 28) and d.test.shape == (2, 28, 28)
    np.testing.assert_array_equal(np.concatenate([d.train, d.test]), (a >= 127.5).astype(np.float32))
    train, test = dvae.load_data(dvae.DVAESettings(data=str(p), grid=7, batch_size=8))
    assert train.shape == (18, 28, 28)


def test_npy_bad_files_one_line(tmp_path):
    p = tmp_path / "x.npy"
    cases = [(np.zeros((3, 27)), "not square"), (np.zeros((1, 4, 4)), "at least 2 images"),
             (np.zeros((3, 4, 4, 2)), "expected images")]
    for arr, msg in cases:
        np.save(p, arr)
        with pytest.raises(ValueError, match=msg) as e:
            images.load(str(p))
        assert "\n" not in str(e.value) and str(p) in str(e.value)
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        images.load(str(p))
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npy"):
        images.load(str(tmp_path / "junk.npy"))
