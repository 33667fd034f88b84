"""Binary image data sets for the discrete VAE: embedded 8x8 digits, generated 28x28 shapes and
wires, MNIST.

Every loader returns an ``ImageData``: ``train`` and ``test`` float32[N, H, W] with values in
{0, 1} (a held-out split always exists) and a ``name``.

* ``digits()``: scikit-learn's 8x8 handwritten digits (1797 images, intensities 0..16),
  binarised at half intensity (x >= 8), shipped in the package as ``digits8x8.npz`` (packed
  bits; no scikit-learn at run time). The held-out split is a fixed permutation (seed 0) of
  ``n_test`` = 297 images; the other 1500 are the training set.
* ``load_mnist(path)``: a directory holding ``train-images-idx3-ubyte[.gz]`` and
  ``t10k-images-idx3-ubyte[.gz]`` (the standard IDX files), or an ``.npz`` with ``x_train`` and
  ``x_test`` ([N, H, W] or [N, H*W] with a square H*W). Static binarisation: a pixel is 1 when
  it is at least half the maximum intensity (255 for uint8 data, else the training set's max).
* ``load_npy(path)``: one .npy of images [N, H, W] (or [N, H*W] with a square H*W) that the user
  brings, e.g. MNIST saved with ``np.save``; binarised as above; the last ``round(0.1 N)`` images
  (at least 1) are held out.
* ``shapes()``: ``gfnem_jax.data.shapes``' generated 28x28 images (4000 training, 500 held out,
  seed 0), made on the fly: long-range structure, no file.
* ``wires()``: ``gfnem_jax.data.wires``' generated 28x28 images (4000 + 500, seed 0): cells
  joined by wires, with an exact likelihood and entropy (the NLL a perfect model reaches).
* ``load(data)``: "digits", "shapes", "wires" or a path (directory, .npz or .npy).

Bad files raise one-line ValueErrors naming the file and the problem (wrong magic number,
truncated data, wrong shapes, missing keys).
"""
from __future__ import annotations

import gzip
import os
from typing import NamedTuple

import numpy as np

DIGITS_FILE = os.path.join(os.path.dirname(__file__), "digits8x8.npz")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


class ImageData(NamedTuple):
    train: np.ndarray  # float32[N, H, W] in {0, 1}
    test: np.ndarray  # float32[M, H, W] in {0, 1}
    name: str

    @property
    def shape(self):
        return tuple(self.train.shape[1:])


def binarize(x: np.ndarray, max_value: float) -> np.ndarray:
    """float32 {0, 1}: x >= 0.5 * max_value (static binarisation)."""
    return (np.asarray(x, np.float64) >= 0.5 * float(max_value)).astype(np.float32)


def digits(n_test: int = 297, split_seed: int = 0) -> ImageData:
    """The embedded 8x8 digits, binarised at intensity >= 8, with a fixed held-out split."""
    with np.load(DIGITS_FILE) as f:
        bits = np.unpackbits(f["bits"], axis=1)[:, :64]
    x = bits.reshape(-1, 8, 8).astype(np.float32)
    if not 1 <= n_test < len(x):
        raise ValueError(f"n_test must be in [1, {len(x) - 1}], got {n_test}")
    perm = np.random.default_rng(split_seed).permutation(len(x))
    return ImageData(x[perm[n_test:]], x[perm[:n_test]], "digits")


def read_idx(path: str) -> np.ndarray:
    """uint8[N, H, W] from an IDX image file (gzip-compressed if it starts with the gzip magic)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 16:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need 16)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(f"{path}: wrong IDX magic number 0x{magic:08x} (images are 0x{IDX_IMAGES_MAGIC:08x})")
    n, h, w = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    need = n * h * w
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"{path}: empty IDX image array ({n} x {h} x {w})")
    if len(raw) - 16 < need:
        raise ValueError(f"{path}: truncated IDX data ({len(raw) - 16} bytes, header says {n} x {h} x {w} = {need})")
    return np.frombuffer(raw, np.uint8, need, 16).reshape(n, h, w)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise ValueError(f"{directory}: no {stem} or {stem}.gz (MNIST IDX image files)")


def _as_images(a: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        side = int(round(np.sqrt(a.shape[1])))
        if side * side != a.shape[1]:
            raise ValueError(f"{where}: rows of length {a.shape[1]} are not square images")
        a = a.reshape(len(a), side, side)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"{where}: expected images [N, H, W] or [N, H*W], got shape {a.shape}")
    if a.dtype.kind not in "uif":
        raise ValueError(f"{where}: expected numbers, got dtype {a.dtype}")
    return a


def _max_value(train: np.ndarray) -> float:
    if train.dtype == np.uint8:
        return 255.0
    m = float(np.max(train))
    return m if m > 0 else 1.0


def load_mnist(path: str) -> ImageData:
    """MNIST (or any same-format images) from an IDX directory or an .npz; see the module doc."""
    if os.path.isdir(path):
        train = read_idx(_find(path, MNIST_FILES["train"]))
        test = read_idx(_find(path, MNIST_FILES["test"]))
    elif os.path.isfile(path):
        try:
            f = np.load(path, allow_pickle=False)
        except Exception as e:  # zipfile / pickle / format errors all mean "not an npz"
            raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
        if not hasattr(f, "files"):
            raise ValueError(f"{path}: not an .npz archive (expected keys x_train and x_test)")
        with f:
            missing = [k for k in ("x_train", "x_test") if k not in f.files]
            if missing:
                raise ValueError(f"{path}: missing key(s) {', '.join(missing)} (has: {', '.join(f.files) or 'none'})")
            try:
                train = _as_images(f["x_train"], f"{path}[x_train]")
                test = _as_images(f["x_test"], f"{path}[x_test]")
            except (OSError, EOFError, ValueError) as e:
                if isinstance(e, ValueError) and str(e).startswith(path):
                    raise
                raise ValueError(f"{path}: corrupt array data ({e})") from None
    else:
        raise ValueError(f"data {path!r} is neither {' nor '.join(map(repr, NAMES))} nor an existing directory, .npz or .npy file")
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"{path}: train images are {train.shape[1:]} but test images are {test.shape[1:]}")
    mx = _max_value(train)
    return ImageData(binarize(train, mx), binarize(test, mx), os.path.basename(os.path.normpath(path)))


NAMES = ("digits", "shapes", "wires")  # the data sets made in the package, no file needed
NPY_TEST_FRACTION = 0.1


def shapes() -> ImageData:
    """``gfnem_jax.data.shapes.shapes()``: 4000 + 500 generated 28x28 images (seed 0)."""
    from gfnem_jax.data.shapes import shapes as make
    train, test = make()
    return ImageData(train, test, "shapes")


def wires() -> ImageData:
    """``gfnem_jax.data.wires.wires()``: 4000 + 500 generated 28x28 images (seed 0) with an exact
    likelihood (``gfnem_jax.data.wires.log_prob``, ``entropy``)."""
    from gfnem_jax.data.wires import wires as make
    train, test = make()
    return ImageData(train, test, "wires")


def load_npy(path: str) -> ImageData:
    """Images from one .npy (see the module doc): the last 10% (at least one image) held out."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # pickled objects, truncated or foreign files
        raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
    a = _as_images(a, path)
    if len(a) < 2:
        raise ValueError(f"{path}: needs at least 2 images (one held out), got {len(a)}")
    n_test = max(1, int(round(NPY_TEST_FRACTION * len(a))))
    mx = _max_value(a[:-n_test])
    return ImageData(binarize(a[:-n_test], mx), binarize(a[-n_test:], mx),
                     os.path.basename(path))


def load(data: str = "digits") -> ImageData:
    """``data``: "digits" (embedded), "shapes" or "wires" (generated) or a path to MNIST IDX
    files, an .npz or an .npy."""
    if data == "digits":
        return digits()
    if data == "shapes":
        return shapes()
    if data == "wires":
        return wires()
    if data.endswith(".npy") and os.path.isfile(data):
        return load_npy(data)
    return load_mnist(data)
