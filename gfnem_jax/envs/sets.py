"""Set generation (da Silva et al., NeurIPS 2024 "DIV"; Shen et al. 2023): choose a subset of
fixed size ``k`` from a ground set {0, ..., N-1}, one element per step.

State: ``members`` bool[N] and ``n`` int32[] (the number of chosen elements). Forward action
``i < N`` adds element i (legal while i is not chosen and n < k). There is no stop action: a state
is terminal exactly when n == k, so every complete trajectory has exactly k steps. Backward action
``j < N`` removes element j (legal while j is chosen). The state graph is a DAG, not a tree: each
k-set is reached by k! orderings, so P_B matters (learned, or uniform = 1/n over the chosen ones).

Reward (fixed random weights drawn once from ``seed`` with ``jax.random``)::

    u ~ N(0, 1)^N,   W_ij = W_ji ~ N(0, 1) (i < j),
    s(x) = sum_{i in x} u_i + (1 / sqrt(k)) * sum_{i < j in x} W_ij
    log R(x) = s(x) / temperature

The 1/sqrt(k) keeps the k(k-1)/2 pairwise terms on the same scale as the k unary ones. The
``temperature`` (default 1: the top 10 of the 924 default sets hold ~30% of the mass, the top 50
~65%) sets how peaked the target is; lower it for fewer, sharper modes. Everything is small enough
for exact metrics: there are ``sum_{j <= k} C(N, j)`` states (2510 for the default N = 12, k = 6;
DIV's |D| = 32, k = 16 is far too big to enumerate).

Dense index (``state_index``): states are grouped by size j (offset ``sum_{i<j} C(N, i)``); inside a
group, a set {c_1 < ... < c_j} has the colexicographic rank ``sum_m C(c_m, m)`` (combinatorial
number system), computed in jnp from a cumulative count of the members.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.envs.base import Environment


class SetState(NamedTuple):
    members: jax.Array  # bool[N]
    n: jax.Array  # int32[]


def _binom_table(N: int, k: int) -> np.ndarray:
    """int64[N+1, k+2] with C(e, m) (0 when m > e)."""
    t = np.zeros((N + 1, k + 2), np.int64)
    for e in range(N + 1):
        for m in range(k + 2):
            t[e, m] = math.comb(e, m)
    return t


@dataclasses.dataclass(frozen=True)
class SetGeneration(Environment):
    """SetGeneration(size=N, k, seed, temperature): k-subsets of {0..N-1}, rewards from ``seed``.

    Features: the membership vector (float[N]) followed by a one-hot of n (k+1 entries).
    """

    size: int = 12
    k: int = 6
    seed: int = 0
    temperature: float = 1.0

    def __post_init__(self):
        if int(self.size) < 2:
            raise ValueError(f"SetGeneration: size must be >= 2, got {self.size}")
        if not 1 <= int(self.k) <= int(self.size):
            raise ValueError(f"SetGeneration: k must be in [1, size={self.size}], got {self.k}")
        if not self.temperature > 0:
            raise ValueError(f"SetGeneration: temperature must be > 0, got {self.temperature}")
        key = jax.random.PRNGKey(int(self.seed))
        ku, kw = jax.random.split(key)
        u = np.asarray(jax.random.normal(ku, (self.size,)), np.float64)
        w = np.asarray(jax.random.normal(kw, (self.size, self.size)), np.float64)
        w = np.triu(w, 1)
        w = (w + w.T) / math.sqrt(self.k)  # symmetric, zero diagonal
        # derived constants (not dataclass fields: equality / hash come from the settings)
        object.__setattr__(self, "_u", tuple(float(v) for v in u))
        object.__setattr__(self, "_w", tuple(tuple(float(v) for v in row) for row in w))

    # sizes
    @property
    def n_actions(self) -> int:
        return self.size

    @property
    def n_bwd_actions(self) -> int:
        return self.size

    @property
    def max_steps(self) -> int:
        return self.k

    @property
    def feature_dim(self) -> int:
        return self.size + self.k + 1

    # dynamics
    def init(self, cond=None) -> SetState:
        return SetState(jnp.zeros((self.size,), bool), jnp.zeros((), jnp.int32))

    def forward_mask(self, s: SetState) -> jax.Array:
        return ~s.members & (s.n < self.k)

    def backward_mask(self, s: SetState) -> jax.Array:
        return s.members

    def step(self, s: SetState, action) -> SetState:
        action = jnp.asarray(action, jnp.int32)
        hit = jnp.arange(self.size) == action
        ok = (s.n < self.k) & ~jnp.any(hit & s.members)
        members = jnp.where(ok, s.members | hit, s.members)
        return SetState(members, jnp.where(ok, s.n + 1, s.n))

    def backward_step(self, s: SetState, bwd_action) -> SetState:
        bwd_action = jnp.asarray(bwd_action, jnp.int32)
        hit = jnp.arange(self.size) == bwd_action
        ok = jnp.any(hit & s.members)
        members = jnp.where(ok, s.members & ~hit, s.members)
        return SetState(members, jnp.where(ok, s.n - 1, s.n))

    def backward_action(self, s, action):
        return jnp.asarray(action, jnp.int32)

    def forward_action(self, s, bwd_action):
        return jnp.asarray(bwd_action, jnp.int32)

    def is_terminal(self, s: SetState) -> jax.Array:
        return s.n == self.k

    def is_initial(self, s: SetState) -> jax.Array:
        return s.n == 0

    def features(self, s: SetState) -> jax.Array:
        return jnp.concatenate([s.members.astype(jnp.float32),
                                jax.nn.one_hot(s.n, self.k + 1, dtype=jnp.float32)])

    def terminal_value(self, s: SetState) -> jax.Array:
        return s.members.astype(jnp.int32)

    # reward (not part of the dynamics)
    def weights(self):
        """(u float32[N], W float32[N, N]) of the reward (W symmetric, zero diagonal, already / sqrt(k))."""
        return jnp.asarray(self._u, jnp.float32), jnp.asarray(self._w, jnp.float32)

    def default_params(self) -> dict:
        """{"u": float32[N], "w": float32[N, N], "temperature": float32[]} from the fields."""
        u, w = self.weights()
        return {"u": u, "w": w, "temperature": jnp.asarray(self.temperature, jnp.float32)}

    def score(self, members: jax.Array, params=None) -> jax.Array:
        """s(x) = sum_i u_i x_i + sum_{i<j} W_ij x_i x_j for bool[..., N] memberships."""
        p = self.default_params() if params is None else params
        x = members.astype(jnp.float32)
        return x @ p["u"] + 0.5 * jnp.einsum("...i,ij,...j->...", x, p["w"], x)

    def log_reward(self, params, cond, s: SetState) -> jax.Array:
        """log R(x) = s(x) / temperature with weights ``params`` (None = from the fields)."""
        p = self.default_params() if params is None else params
        return self.score(s.members, p) / p["temperature"]

    # enumeration
    def _offsets(self):
        return [sum(math.comb(self.size, i) for i in range(j)) for j in range(self.k + 2)]

    def num_states(self, cond=None) -> int:
        return self._offsets()[self.k + 1]

    def all_states(self, cond=None) -> SetState:
        N, k = self.size, self.k
        S = self.num_states()
        members = np.zeros((S, N), bool)
        ns = np.zeros((S,), np.int32)
        table = _binom_table(N, k)
        offs = self._offsets()
        for j in range(k + 1):
            for comb in itertools.combinations(range(N), j):
                r = offs[j] + sum(int(table[c, m + 1]) for m, c in enumerate(comb))
                members[r, list(comb)] = True
                ns[r] = j
        return SetState(jnp.asarray(members), jnp.asarray(ns))

    def state_index(self, s: SetState, cond=None) -> jax.Array:
        table = jnp.asarray(_binom_table(self.size, self.k).astype(np.int32))
        offs = jnp.asarray(np.asarray(self._offsets()[: self.k + 1], np.int32))
        x = s.members.astype(jnp.int32)
        cnt = jnp.clip(jnp.cumsum(x), 0, self.k + 1)  # m of each member (1-based)
        rank = jnp.sum(jnp.where(s.members, table[jnp.arange(self.size), cnt], 0))
        return (offs[jnp.clip(s.n, 0, self.k)] + rank).astype(jnp.int32)

    def terminal_indices(self):
        """Index range of the terminal (size-k) states in ``all_states``."""
        o = self._offsets()
        return jnp.arange(o[self.k], o[self.k + 1])
