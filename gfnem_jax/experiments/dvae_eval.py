"""Evaluation of the discrete VAE: test NLL by importance sampling, codes of images, PNG grids.

Importance-sampled log-likelihood with the encoder q(z | x) (the GFlowNet's P_F) as proposal:

    log p_hat(x) = log (1/S) sum_s p_theta(x, z_s) / q(z_s | x),   z_s ~ q(. | x),

where log q(z_s | x) is exact: the sum of the sampled trajectory's log P_F (the Sequence
environment is a tree, so one trajectory per z). E[p_hat] = p(x) for any proposal whose support
covers the posterior's; with the exact posterior every weight equals p(x) (zero variance).
Computation is batched under a fixed budget of ``rows`` (image, sample) pairs per compiled call:
ctx is encoded once per image and shared by its samples (``PrecomputedContext``). Per-sample keys
are fold_in(fold_in(key, image index), sample index), so results do not depend on the budget.

VQ-VAE: the paper's bound -log p(x | z_enc) + L log K (``VQVAE.nll_bound``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.models.dvae_encoder import PrecomputedContext
from gfnem_jax.sampling import Exploration, forward_rollout

GREEDY = Exploration(temperature=1e-4)  # softmax(logits / 1e-4): the argmax action, in practice


def log_mean_exp(log_w: np.ndarray, axis: int = -1) -> np.ndarray:
    """log (1/S) sum_s exp(log_w_s), in float64."""
    a = np.asarray(log_w, np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    return (np.log(np.mean(np.exp(a - m), axis=axis)) + np.squeeze(m, axis)).astype(np.float64)


def sample_codes(env, policy, params, key, x, n: int, sample_offset=0,
                 explore: Exploration = Exploration()):
    """(z int32[N, n, L], log q float[N, n]) for images x [N, H, W]: n codes per image from P_F.

    Image i's samples use keys fold_in(fold_in(key, i), sample_offset + s)."""
    ctx = jax.vmap(policy.encode_cond, (None, 0))(params, x)
    wrapped = PrecomputedContext(policy)

    def one(k, c):
        cond = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), c)
        tr = forward_rollout(env, wrapped, params, k, n, lambda *_: jnp.zeros(()), None, cond,
                             explore, sample_offset)
        return jax.vmap(env.terminal_value)(tr.terminal), jnp.sum(tr.log_pf, axis=1)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
    return jax.vmap(one)(keys, ctx)


def make_log_weights(env, policy, log_joint: Callable, images: int, samples: int):
    """Jitted (params, theta, x [images, H, W], key, image_offset, sample_offset) ->
    log w float[images, samples] = log p_theta(x, z) - log q(z | x), z ~ q."""

    @jax.jit
    def fn(params, theta, x, key, image_offset, sample_offset):
        ctx = jax.vmap(policy.encode_cond, (None, 0))(params, x)
        wrapped = PrecomputedContext(policy)

        def one(i, xi, c):
            k = jax.random.fold_in(key, image_offset + i)
            cond = jax.tree.map(lambda a: jnp.broadcast_to(a, (samples,) + a.shape), c)
            tr = forward_rollout(env, wrapped, params, k, samples, lambda *_: jnp.zeros(()), None,
                                 cond, Exploration(), sample_offset)
            z = jax.vmap(env.terminal_value)(tr.terminal)
            lp = jax.vmap(lambda zz: log_joint(theta, xi, zz))(z)
            return lp - jnp.sum(tr.log_pf, axis=1)

        return jax.vmap(one)(jnp.arange(x.shape[0]), x, ctx)

    return fn


def plan(n_images: int, n_samples: int, rows: int):
    """(images per call, samples per call) with images * samples <= max(rows, 1)."""
    c = max(1, min(n_samples, rows))
    b = max(1, min(n_images, rows // c))
    return b, c


def is_log_likelihood(env, policy, params, log_joint: Callable, theta, x, key, n_samples: int = 5000,
                      rows: int = 8192, fn_cache: Optional[dict] = None) -> np.ndarray:
    """float64[N]: the importance-sampling estimate of log p_theta(x_i) for images x [N, H, W].

    rows: (image, sample) pairs per compiled call (the memory budget). The result depends only on
    ``key`` and ``n_samples``, not on ``rows``.
    """
    x = np.asarray(x, np.float32)
    N = len(x)
    b, c = plan(N, n_samples, rows)
    key_ = (b, c)
    fn = (fn_cache or {}).get(key_)
    if fn is None:
        fn = make_log_weights(env, policy, log_joint, b, c)
        if fn_cache is not None:
            fn_cache[key_] = fn
    out = np.zeros((N, n_samples), np.float64)
    for i0 in range(0, N, b):
        xb = x[i0:i0 + b]
        nb = len(xb)
        if nb < b:
            xb = np.concatenate([xb, np.zeros((b - nb,) + x.shape[1:], np.float32)])
        for s0 in range(0, n_samples, c):
            w = np.asarray(fn(params, theta, jnp.asarray(xb), key, jnp.int32(i0), jnp.int32(s0)))
            ns = min(c, n_samples - s0)
            out[i0:i0 + nb, s0:s0 + ns] = w[:nb, :ns]
    return log_mean_exp(out)


def vq_nll_bound(vq, params, x, batch: int = 512) -> np.ndarray:
    """float64[N]: -log p(x | z_enc) + L log K per image (VQ-VAE)."""
    fn = jax.jit(jax.vmap(lambda xi: vq.nll_bound(params, xi)))
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch])), np.float64)
                           for i in range(0, len(x), batch)])


def elbo_terms(env, policy, params, log_joint, theta, x, key):
    """float[N]: one-sample ELBO log p(x, z) - log q(z | x), z ~ q (a cheap training curve)."""
    z, lq = sample_codes(env, policy, params, key, x, 1)
    lp = jax.vmap(lambda xi, zi: log_joint(theta, xi, zi[0]))(x, z)
    return lp - lq[:, 0]


def tile(images: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
    """float[rows*(H+pad)+pad, cols*(W+pad)+pad] grid of images [N, H, W] (N padded with blanks)."""
    images = np.asarray(images, np.float32)
    n, H, W = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad), 0.5, np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = images[k]
    return out


def save_png(path: str, grid: np.ndarray, scale: int = 4, title: str = "") -> None:
    """Write a grey-scale grid (values in [0, 1]) as a PNG, each pixel a scale x scale block,
    under ``title`` when one is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    big = np.kron(np.clip(grid, 0, 1), np.ones((scale, scale), np.float32))
    if not title:
        mpimg.imsave(path, big, cmap="gray", vmin=0.0, vmax=1.0)
        return
    h, w = big.shape
    fig = plt.figure(figsize=(w / 100, h / 100 + 0.45), dpi=100)
    ax = fig.add_axes((0, 0, 1, h / (h + 45)))
    ax.imshow(big, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8, y=0.99, va="top")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_grid(x: np.ndarray, recon: np.ndarray, cols: int = 16) -> np.ndarray:
    """Rows of ``cols`` originals, each followed by a row of their reconstructions."""
    x, recon = np.asarray(x), np.asarray(recon)
    n = (len(x) // cols) * cols or len(x)
    blocks = []
    for i in range(0, n, cols):
        blocks += list(x[i:i + cols]) + list(recon[i:i + cols])
    return tile(np.stack(blocks), min(cols, len(x)))


def independent_pixels_nll(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """float64[M]: -log p(x) of each test image under the model with no latent: independent
    Bernoulli pixels at the training set's frequencies (add-one smoothed). A latent model whose
    NLL is not below it does not use its codes."""
    tr = np.asarray(train, np.float64).reshape(len(train), -1)
    te = np.asarray(test, np.float64).reshape(len(test), -1)
    p = (tr.sum(0) + 1.0) / (len(tr) + 2.0)
    return -(te @ np.log(p) + (1 - te) @ np.log1p(-p))


def nats_summary(ll: np.ndarray) -> dict:
    """{"nll": mean -log p, "nll_sem": its standard error} over images."""
    nll = -np.asarray(ll, np.float64)
    return {"nll": float(nll.mean()), "nll_sem": float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0}
