"""Discrete VAE: a grid of G x G discrete codes (K values each) and a convolutional Bernoulli decoder.

Latent z: int32[L], L = G*G, the code grid in raster order (the terminal tokens of
``gfnem_jax.envs.sequence.Sequence(length=L, vocab=K)``). Image x: float[H, W] in {0, 1}.

    log p_theta(x, z) = log p(z) + sum_ij [x_ij l_ij - softplus(l_ij)],   l = Decoder(E[z])

* ``E[K, D]``: code embeddings (learned); ``Decoder``: conv 3x3 at the grid resolution, stride-2
  transposed convolutions until the image size is reached (a final bilinear resize when H is not
  G * 2^k, e.g. 28 from 4: 4 -> 8 -> 16 -> 32 -> 28), conv 3x3 -> one logit per pixel. The paper
  uses 128 channels; ``channels`` scales it (64 is plenty for 8x8 digits on a CPU).
* prior p(z): "uniform" (log p(z) = -L log K) or "learned": autoregressive in raster order,
  p(z) = prod_i Cat(z_i; softmax(MLP([onehot(z_<i) masked; onehot(i)]))), trained jointly by the
  M-step (it is part of theta).

``DVAE`` holds the sizes (static, hashable); its methods are pure functions of theta.
``VQVAE`` is the baseline (encoder CNN, nearest-code quantisation with straight-through
gradients, EMA codebook with decay 0.999, commitment 0.25); its NLL bound is
-log p(x | z_enc) + L log K (uniform prior over codes).
The factorised encoder q(z | x) = prod_i q(z_i | x) is ``DVAEEncoder(autoregressive=False)`` in
``gfnem_jax.models.dvae_encoder`` (a policy whose logits ignore the codes placed so far).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.startup import compiled_method

PRIORS = ("uniform", "learned")


def _n_doublings(src: int, dst: int) -> int:
    n = 0
    while src * 2 ** n < dst:
        n += 1
    return n


class ImageEncoder(nn.Module):
    """x float[H, W] -> float[G, G, out]: stride-2 convs down to the grid (SAME padding)."""

    grid: int
    channels: int
    out: int

    @nn.compact
    def __call__(self, x):
        h = x[..., None].astype(jnp.float32)
        h = nn.relu(nn.Conv(self.channels, (3, 3))(h))
        while h.shape[0] > self.grid:
            h = nn.relu(nn.Conv(self.channels, (4, 4), strides=2)(h))
        if h.shape[:2] != (self.grid, self.grid):
            h = jax.image.resize(h, (self.grid, self.grid, h.shape[-1]), "bilinear")
        h = nn.relu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(self.out, (1, 1))(h)


class Decoder(nn.Module):
    """Embedded code grid float[G, G, D] -> pixel logits float[H, W]."""

    image_shape: Tuple[int, int]
    channels: int

    @nn.compact
    def __call__(self, e):
        H, W = self.image_shape
        h = nn.relu(nn.Conv(self.channels, (3, 3))(e))
        h = h + nn.relu(nn.Conv(self.channels, (3, 3))(h))
        for _ in range(_n_doublings(e.shape[0], H)):
            h = nn.relu(nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2))(h))
        if h.shape[:2] != (H, W):
            h = jax.image.resize(h, (H, W, h.shape[-1]), "bilinear")
        h = nn.relu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(1, (3, 3))(h)[..., 0]


class CodeDecoder(nn.Module):
    """z int32[L] -> logits float[H, W] through the code embeddings."""

    grid: int
    codes: int
    embed_dim: int
    image_shape: Tuple[int, int]
    channels: int

    @nn.compact
    def __call__(self, z):
        e = nn.Embed(self.codes, self.embed_dim, name="embed")(z)
        return Decoder(self.image_shape, self.channels, name="decoder")(
            e.reshape(self.grid, self.grid, self.embed_dim))


class ARPrior(nn.Module):
    """logits float[L, K] with row i a function of z_<i only (raster order)."""

    length: int
    codes: int
    hidden: int

    @nn.compact
    def __call__(self, z):
        L, K = self.length, self.codes
        oh = jax.nn.one_hot(z, K)  # -1 (unset) -> zeros
        d1, d2, d3 = nn.Dense(self.hidden), nn.Dense(self.hidden), nn.Dense(K)

        def row(i):
            inp = jnp.concatenate([(oh * (jnp.arange(L) < i)[:, None]).reshape(-1),
                                   jax.nn.one_hot(i, L)])
            return d3(nn.relu(d2(nn.relu(d1(inp)))))

        return jax.vmap(row)(jnp.arange(L))


def bernoulli_log_lik(logits: jax.Array, x: jax.Array) -> jax.Array:
    """sum over pixels of log Bernoulli(x | sigmoid(logits)) = sum x l - softplus(l)."""
    return jnp.sum(x * logits - jax.nn.softplus(logits))


@dataclasses.dataclass(frozen=True)
class DVAE:
    """The generative model p_theta(x, z) (see the module docstring). theta = {"decoder", "prior"}."""

    image_shape: Tuple[int, int] = (8, 8)
    grid: int = 4
    codes: int = 8
    channels: int = 64
    embed_dim: int = 32
    prior: str = "uniform"
    prior_hidden: int = 128

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.codes < 2:
            raise ValueError(f"codes must be >= 2, got {self.codes}")
        if self.grid < 1 or self.grid > min(self.image_shape):
            raise ValueError(f"grid must be in [1, {min(self.image_shape)}], got {self.grid}")

    @property
    def length(self) -> int:
        return self.grid * self.grid

    @property
    def decoder_net(self) -> CodeDecoder:
        return CodeDecoder(self.grid, self.codes, self.embed_dim, tuple(self.image_shape), self.channels)

    @property
    def prior_net(self) -> ARPrior:
        return ARPrior(self.length, self.codes, self.prior_hidden)

    @compiled_method
    def init(self, key) -> Dict[str, Any]:
        kd, kp = jax.random.split(key)
        z = jnp.zeros((self.length,), jnp.int32)
        prior = self.prior_net.init(kp, z) if self.prior == "learned" else {}
        return {"decoder": self.decoder_net.init(kd, z), "prior": prior}

    def logits(self, theta, z) -> jax.Array:
        """float[H, W] pixel logits of p_theta(x | z); z int32[L]."""
        return self.decoder_net.apply(theta["decoder"], z)

    def log_prior(self, theta, z) -> jax.Array:
        if self.prior == "uniform":
            return jnp.asarray(-self.length * math.log(self.codes), jnp.float32)
        lp = jax.nn.log_softmax(self.prior_net.apply(theta["prior"], z), axis=-1)
        return jnp.sum(jnp.take_along_axis(lp, z[:, None], axis=-1))

    def log_likelihood(self, theta, x, z) -> jax.Array:
        """log p_theta(x | z), float[]."""
        return bernoulli_log_lik(self.logits(theta, z), x)

    def log_joint(self, theta, x, z) -> jax.Array:
        """log p_theta(x, z) = log p(z) + log p_theta(x | z), exact; x float[H, W], z int32[L]."""
        return self.log_prior(theta, z) + self.log_likelihood(theta, x, z)

    def sample_prior(self, theta, key, n: int) -> jax.Array:
        """int32[n, L] codes from p(z) (the AR prior: one lax.scan over positions)."""
        L, K = self.length, self.codes
        if self.prior == "uniform":
            return jax.random.randint(key, (n, L), 0, K).astype(jnp.int32)
        return jax.vmap(lambda k: self._prior_one(theta, k))(jax.random.split(key, n))

    def _prior_one(self, theta, k) -> jax.Array:
        """int32[L]: one code grid from the learned AR prior with key k."""
        L = self.length

        def body(z, i):
            logits = self.prior_net.apply(theta["prior"], z)[i]
            return z.at[i].set(jax.random.categorical(jax.random.fold_in(k, i), logits)), None
        z, _ = jax.lax.scan(body, jnp.full((L,), -1, jnp.int32), jnp.arange(L))
        return z

    def sample(self, theta, key, n: int):
        """(x float[n, H, W], z int32[n, L]) ancestral samples (the sleep phase's pairs)."""
        kz, kx = jax.random.split(key)
        z = self.sample_prior(theta, kz, n)
        p = jax.nn.sigmoid(jax.vmap(lambda zz: self.logits(theta, zz))(z))
        return jax.random.bernoulli(kx, p).astype(jnp.float32), z

    def sample_rows(self, theta, key, n: int, start, size: int):
        """Rows [start, start + size) of ``sample(theta, key, n)``: the same draws (z exactly; x
        the same uniforms compared with p), decoding only those rows (a device's shard of a
        global sleep batch; ``start`` may be traced)."""
        kz, kx = jax.random.split(key)
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
        if self.prior == "uniform":
            z = rows(self.sample_prior(theta, kz, n))
        else:
            z = jax.vmap(lambda k: self._prior_one(theta, k))(rows(jax.random.split(kz, n)))
        p = jax.nn.sigmoid(jax.vmap(lambda zz: self.logits(theta, zz))(z))
        u = rows(jax.random.uniform(kx, (n,) + tuple(p.shape[1:]), p.dtype))
        return (u < p).astype(jnp.float32), z

    def mean_image(self, theta, z) -> jax.Array:
        """float[H, W] = E[x | z] = sigmoid(logits)."""
        return jax.nn.sigmoid(self.logits(theta, z))

    def all_latents(self) -> jax.Array:
        """int32[K^L, L] every code grid in base-K order (tiny grids only)."""
        L, K = self.length, self.codes
        idx = jnp.arange(K ** L)
        return ((idx[:, None] // (K ** jnp.arange(L - 1, -1, -1))[None]) % K).astype(jnp.int32)

    def exact_log_marginal(self, theta, x) -> jax.Array:
        """log p_theta(x) = logsumexp_z log p_theta(x, z), by enumeration (tiny grids only)."""
        zs = self.all_latents()
        return jax.nn.logsumexp(jax.vmap(lambda z: self.log_joint(theta, x, z))(zs))


# -- VQ-VAE baseline -------------------------------------------------------------------------------
class _VQNets(nn.Module):
    grid: int
    embed_dim: int
    image_shape: Tuple[int, int]
    channels: int

    def setup(self):
        self.encoder = ImageEncoder(self.grid, self.channels, self.embed_dim)
        self.decoder = Decoder(self.image_shape, self.channels)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, e):
        return self.decoder(e)

    def __call__(self, x):
        return self.decode(self.encode(x))


@dataclasses.dataclass(frozen=True)
class VQVAE:
    """VQ-VAE (van den Oord et al. 2017) with an EMA codebook.

    params = {"nets": encoder + decoder variables, "codebook": {"embed" [K, D], "count" [K],
    "sum" [K, D]}}. The codebook is not trained by gradients: after each step,
    count <- d count + (1 - d) n_k, sum <- d sum + (1 - d) sum_{enc assigned to k} enc,
    embed = sum / count_smoothed (Laplace smoothing eps), d = ``decay``.
    Loss per image: -log p(x | z_q) (straight-through) + commitment * ||enc - sg(e[z])||^2.
    """

    image_shape: Tuple[int, int] = (8, 8)
    grid: int = 4
    codes: int = 8
    channels: int = 64
    embed_dim: int = 32
    decay: float = 0.999
    commitment: float = 0.25
    eps: float = 1e-5

    @property
    def length(self) -> int:
        return self.grid * self.grid

    @property
    def nets(self) -> _VQNets:
        return _VQNets(self.grid, self.embed_dim, tuple(self.image_shape), self.channels)

    @compiled_method
    def init(self, key) -> Dict[str, Any]:
        kn, kc = jax.random.split(key)
        nets = self.nets.init(kn, jnp.zeros(self.image_shape, jnp.float32))
        embed = jax.random.normal(kc, (self.codes, self.embed_dim))
        return {"nets": nets, "codebook": {"embed": embed, "count": jnp.ones((self.codes,)),
                                           "sum": embed}}

    def encode(self, params, x) -> jax.Array:
        """float[L, D] continuous encoder outputs of one image."""
        return self.nets.apply(params["nets"], x, method=_VQNets.encode).reshape(self.length, -1)

    def quantize(self, embed, h) -> jax.Array:
        """int32[L]: nearest code of every row of h (squared Euclidean distance)."""
        d = jnp.sum(h ** 2, -1, keepdims=True) - 2 * h @ embed.T + jnp.sum(embed ** 2, -1)[None]
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def codes_of(self, params, x) -> jax.Array:
        """int32[L] z_enc(x)."""
        return self.quantize(params["codebook"]["embed"], self.encode(params, x))

    def logits(self, params, z) -> jax.Array:
        e = params["codebook"]["embed"][z].reshape(self.grid, self.grid, -1)
        return self.nets.apply(params["nets"], e, method=_VQNets.decode)

    def loss_one(self, params, x):
        """(loss, (h, z)) of one image; gradients reach the encoder by straight-through."""
        embed = jax.lax.stop_gradient(params["codebook"]["embed"])
        h = self.encode(params, x)
        z = self.quantize(embed, h)
        q = embed[z]
        st = h + jax.lax.stop_gradient(q - h)
        logits = self.nets.apply(params["nets"], st.reshape(self.grid, self.grid, -1),
                                 method=_VQNets.decode)
        rec = -bernoulli_log_lik(logits, x)
        commit = jnp.sum((h - q) ** 2)
        return rec + self.commitment * commit, (jax.lax.stop_gradient(h), z)

    def ema_update(self, codebook, h, z):
        """New codebook from encoder outputs h float[N, D] assigned to codes z int32[N]."""
        return self.ema_apply(codebook, *self.ema_stats(h, z))

    def ema_stats(self, h, z):
        """The batch's share of the EMA update of rows h float[N, D] assigned to codes z int32[N]:
        ((1 - d) n_k float[K], (1 - d) sum_k float[K, D]), n_k the rows assigned to code k and
        sum_k their sum; additive over the shards of a batch (sum them over devices)."""
        d = self.decay
        oh = jax.nn.one_hot(z, self.codes, dtype=h.dtype)  # [N, K]
        return (1 - d) * jnp.sum(oh, 0), (1 - d) * oh.T @ h

    def ema_apply(self, codebook, count_inc, sum_inc):
        """New codebook from a batch's (summed) ``ema_stats``."""
        d = self.decay
        count = d * codebook["count"] + count_inc
        s = d * codebook["sum"] + sum_inc
        n = jnp.sum(count)
        smoothed = (count + self.eps) / (n + self.codes * self.eps) * n
        return {"embed": s / smoothed[:, None], "count": count, "sum": s}

    def nll_bound(self, params, x) -> jax.Array:
        """-log p(x | z_enc(x)) + L log K (the paper's bound for VQ-VAE)."""
        z = self.codes_of(params, x)
        return -bernoulli_log_lik(self.logits(params, z), x) + self.length * math.log(self.codes)
