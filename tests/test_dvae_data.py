"""Discrete VAE data: embedded digits, MNIST IDX (gz and raw) and .npz loaders, bad files."""
import gzip
import os

import numpy as np
import pytest

from gfnem_jax.data import images


def _idx_bytes(a: np.ndarray, magic=images.IDX_IMAGES_MAGIC) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def _write(path, data: bytes, gz=False):
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def test_digits_embedded_split_fixed():
    d = images.digits()
    assert d.train.shape == (1500, 8, 8) and d.test.shape == (297, 8, 8)
    assert set(np.unique(d.train)) <= {0.0, 1.0}
    d2 = images.digits()
    np.testing.assert_array_equal(d.test, d2.test)
    # held-out images are not the training images' rows (disjoint split of 1797 images)
    allx = np.concatenate([d.train, d.test])
    assert len(allx) == 1797
    assert 0.2 < d.train.mean() < 0.45


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_dir(tmp_path, gz):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (5, 6, 6))
    te = rng.integers(0, 256, (3, 6, 6))
    suf = ".gz" if gz else ""
    _write(tmp_path / ("train-images-idx3-ubyte" + suf), _idx_bytes(tr), gz)
    _write(tmp_path / ("t10k-images-idx3-ubyte" + suf), _idx_bytes(te), gz)
    d = images.load(str(tmp_path))
    np.testing.assert_array_equal(d.train, (tr >= 127.5).astype(np.float32))
    np.testing.assert_array_equal(d.test, (te >= 127.5).astype(np.float32))


def test_npz_float_and_flat(tmp_path):
    rng = np.random.default_rng(1)
    tr = rng.random((4, 16)).astype(np.float32)
    te = rng.random((2, 4, 4)).astype(np.float32)
    p = tmp_path / "m.npz"
    np.savez(p, x_train=tr, x_test=te)
    d = images.load(str(p))
    mx = tr.max()
    np.testing.assert_array_equal(d.train, (tr.reshape(4, 4, 4) >= 0.5 * mx).astype(np.float32))
    np.testing.assert_array_equal(d.test, (te >= 0.5 * mx).astype(np.float32))


def test_bad_files(tmp_path):
    a = np.zeros((2, 4, 4), np.uint8)
    # wrong magic
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(a, magic=0x00000801))
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(a))
    with pytest.raises(ValueError, match="magic"):
        images.load(str(tmp_path))
    # truncated data
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(a)[:-3])
    with pytest.raises(ValueError, match="truncated"):
        images.load(str(tmp_path))
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(a)[:10])
    with pytest.raises(ValueError, match="truncated"):
        images.load(str(tmp_path))
    # missing file
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(a))
    with pytest.raises(ValueError, match="t10k"):
        images.load(str(tmp_path))
    # npz: missing key, wrong shapes, mismatched shapes, not an npz
    p = tmp_path / "bad.npz"
    np.savez(p, x_train=a)
    with pytest.raises(ValueError, match="missing key.*x_test"):
        images.load(str(p))
    np.savez(p, x_train=np.zeros((2, 5)), x_test=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="not square"):
        images.load(str(p))
    np.savez(p, x_train=np.zeros((2, 4, 4)), x_test=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="train images"):
        images.load(str(p))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="npz"):
        images.load(str(tmp_path / "junk.npz"))
    with pytest.raises(ValueError, match="neither"):
        images.load(str(tmp_path / "nope"))
    for msg_fn in (lambda: images.load(str(p)),):
        with pytest.raises(ValueError) as e:
            msg_fn()
        assert "\n" not in str(e.value)
