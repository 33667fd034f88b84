"""Sequence design (da Silva et al., NeurIPS 2024 "DIV"): fixed-length strings over a small
alphabet, built left to right, with a reward from fixed random weights.

The dynamics are those of :class:`gfnem_jax.envs.sequence.Sequence` (a tree: P_B = 1). Reward
(weights drawn once from ``seed`` with ``jax.random``)::

    a ~ N(0, 1)^{L x V}   (position-specific token weights)
    b ~ N(0, 1)^{V x V}   (neighbour interactions)
    s(x) = sum_{p < L} a[p, x_p] + sum_{p < L-1} b[x_p, x_{p+1}]
    log R(x) = s(x) / temperature

With the default L = 6, V = 4 there are 4096 sequences (5461 states); ``temperature`` (default
1: the top 10 of the 4096 default sequences hold ~35% of the mass)
sets how peaked the target is. DIV uses |D| = 8, length 6 (262144 sequences, still
enumerable): ``--vocab 8``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.envs.sequence import SeqState, Sequence


@dataclasses.dataclass(frozen=True)
class SequenceDesign(Sequence):
    length: int = 6
    vocab: int = 4
    seed: int = 0
    temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"SequenceDesign: temperature must be > 0, got {self.temperature}")
        ka, kb = jax.random.split(jax.random.PRNGKey(int(self.seed)))
        a = np.asarray(jax.random.normal(ka, (self.length, self.vocab)), np.float64)
        b = np.asarray(jax.random.normal(kb, (self.vocab, self.vocab)), np.float64)
        object.__setattr__(self, "_a", tuple(tuple(float(v) for v in r) for r in a))
        object.__setattr__(self, "_b", tuple(tuple(float(v) for v in r) for r in b))

    def weights(self):
        """(a float32[L, V], b float32[V, V])."""
        return jnp.asarray(self._a, jnp.float32), jnp.asarray(self._b, jnp.float32)

    def default_params(self) -> dict:
        """{"a": float32[L, V], "b": float32[V, V], "temperature": float32[]} from the fields."""
        a, b = self.weights()
        return {"a": a, "b": b, "temperature": jnp.asarray(self.temperature, jnp.float32)}

    def score(self, tokens: jax.Array, params=None) -> jax.Array:
        """s(x) for complete int32[L] token arrays (entries must be in [0, V))."""
        p = self.default_params() if params is None else params
        a, b = p["a"], p["b"]
        t = jnp.clip(tokens, 0, self.vocab - 1)
        unary = jnp.sum(a[jnp.arange(self.length), t])
        pair = jnp.sum(b[t[:-1], t[1:]]) if self.length > 1 else 0.0
        return unary + pair

    def log_reward(self, params, cond, s: SeqState) -> jax.Array:
        """log R(x) = s(x) / temperature with weights ``params`` (None = from the fields)."""
        p = self.default_params() if params is None else params
        return self.score(s.tokens, p) / p["temperature"]
