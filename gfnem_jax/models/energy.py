"""Energy-based model on binary vectors: p_phi(x) = exp(-E_phi(x)) / Z_phi, x in {0,1}^d.

``EnergyModel(d, hidden=256, n_layers=3)`` is a frozen (hashable) dataclass around a flax MLP
(d -> hidden -> ... -> 1, swish activations, as the EB-GFN / Gibbs-with-gradients synthetic
experiments), with pure functions of explicit parameters:

    model.init(key) -> params
    model.energy(params, x float[d]) -> float[]                   one vector (vmap for batches)
    energies(model, params, x[B, d]) -> float[B]
    cd_loss(model, params, x_data[B, d], x_neg[B', d]) = mean E(data) - mean_neg E(neg)
        (negatives carry no gradient); with x_neg ~ p_phi its gradient is that of the NLL:
        grad NLL = E_data[grad E] - E_{p_phi}[grad E].
    all_energies(model, params, chunk) -> float32[2^d]     index = bits as binary, first MSB
    log_partition(model, params) = logsumexp(-E) over all 2^d vectors (chunked)
    exact_nll(model, params, x) = mean E(x) + log Z   (nats per example)
Enumeration is for d <= MAX_EXACT_D (2^20 vectors, chunks of 2^chunk_log2 under ``lax.map``).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.envs.bits import all_binary
from gfnem_jax.startup import compiled_method

MAX_EXACT_D = 20


class _EnergyNet(nn.Module):
    hidden: int
    n_layers: int

    @nn.compact
    def __call__(self, x):
        h = x
        for i in range(self.n_layers):
            h = nn.swish(nn.Dense(self.hidden, name=f"dense_{i}")(h))
        return nn.Dense(1, name="out")(h)[..., 0]


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """MLP energy E_phi: {0,1}^d -> R. Integer inputs are cast to float32 (relaxed values allowed)."""

    d: int
    hidden: int = 256
    n_layers: int = 3

    def __post_init__(self):
        if int(self.d) < 1:
            raise ValueError(f"EnergyModel: d must be >= 1, got {self.d}")
        if int(self.hidden) < 1 or int(self.n_layers) < 1:
            raise ValueError(f"EnergyModel: hidden and n_layers must be >= 1, got {self.hidden}, {self.n_layers}")

    @property
    def net(self) -> _EnergyNet:
        return _EnergyNet(self.hidden, self.n_layers)

    @compiled_method
    def init(self, key) -> dict:
        return self.net.init(key, jnp.zeros((self.d,), jnp.float32))

    def energy(self, params, x) -> jax.Array:
        """float[]: E_phi(x) for one x float[d] (also works on leading batch axes)."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        return self.net.apply(params, x)


def energies(model: EnergyModel, params, x) -> jax.Array:
    """float[B]: E_phi of each row of x[B, d]."""
    return jax.vmap(lambda v: model.energy(params, v))(jnp.asarray(x))


def cd_loss(model: EnergyModel, params, x_data, x_neg) -> jax.Array:
    """mean_i E(x_data_i) - mean_j E(x_neg_j), negatives under stop_gradient.

    Its gradient is the (contrastive-divergence / maximum-likelihood) estimate of grad NLL.
    """
    x_neg = jax.lax.stop_gradient(jnp.asarray(x_neg))
    return jnp.mean(energies(model, params, x_data)) - jnp.mean(energies(model, params, x_neg))


def _check_exact(d: int):
    if d > MAX_EXACT_D:
        raise ValueError(f"exact enumeration needs d <= {MAX_EXACT_D}, got d={d}")


def all_energies(model: EnergyModel, params, chunk_log2: int = 14) -> jax.Array:
    """float[2^d] (float32 unless params are float64): E_phi of every {0,1}^d vector, index = bits as binary (first bit MSB).

    Computed in chunks of 2^min(chunk_log2, d) vectors under ``lax.map`` (bounded memory).
    """
    d = model.d
    _check_exact(d)
    c = min(chunk_log2, d)
    n_chunks = 2 ** (d - c)
    low = all_binary(c).astype(jnp.float32)  # the c least significant bits
    high = all_binary(d - c).astype(jnp.float32)  # [n_chunks, d - c]

    def one(hi):
        x = jnp.concatenate([jnp.broadcast_to(hi, (low.shape[0], d - c)), low], axis=1)
        return energies(model, params, x)

    return jax.lax.map(one, high).reshape(-1) if n_chunks > 1 else one(high[0])


def log_partition(model: EnergyModel, params, chunk_log2: int = 14) -> jax.Array:
    """float[]: log Z_phi = logsumexp_x -E_phi(x) over {0,1}^d (exact, d <= 20)."""
    return jax.nn.logsumexp(-all_energies(model, params, chunk_log2))


def exact_nll(model: EnergyModel, params, x, chunk_log2: int = 14) -> jax.Array:
    """float[]: -(1/n) sum_i log p_phi(x_i) = mean E(x_i) + log Z_phi (nats per example)."""
    return jnp.mean(energies(model, params, x)) + log_partition(model, params, chunk_log2)


def log_probs(model: EnergyModel, params, chunk_log2: int = 14) -> jax.Array:
    """float32[2^d]: log p_phi of every vector (binary index order)."""
    e = all_energies(model, params, chunk_log2)
    return -e - jax.nn.logsumexp(-e)


def bits_to_index(x) -> jax.Array:
    """int32[...]: rows x[..., d] of {0,1} read as binary numbers, first bit most significant."""
    x = jnp.asarray(x).astype(jnp.int32)
    d = x.shape[-1]
    return jnp.sum(x * (2 ** jnp.arange(d - 1, -1, -1)), axis=-1).astype(jnp.int32)
