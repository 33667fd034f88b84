"""HyperGrid (Bengio et al., NeurIPS 2021), the task every GFlowNet library is compared on.

States are points of {0, ..., H-1}^d plus a ``done`` flag. Forward actions: ``i < d`` adds 1 to
coordinate i (legal while it is below H-1); ``d`` stops, moving x to its terminal copy. Backward
actions: ``i < d`` subtracts 1 from coordinate i (legal while it is positive, and not at a terminal
state); ``d`` undoes the stop (the only legal backward action at a terminal state).

Reward, with a_k = |x_k / (H-1) - 0.5|:
    R(x) = r0 + r1 * prod_k [0.25 < a_k] + r2 * prod_k [0.3 < a_k < 0.4].
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gfnem_jax.envs.base import Environment


class GridState(NamedTuple):
    pos: jax.Array  # int32[d]
    done: jax.Array  # bool[]


@dataclasses.dataclass(frozen=True)
class HyperGrid(Environment):
    """HyperGrid(ndim, height, r0, r1=0.5, r2=2.0).

    Features are the concatenated one-hot encodings of the coordinates ("K-hot"), length d*H.
    A complete trajectory has at most d*(H-1) + 1 steps (the last one being stop).
    """

    ndim: int = 2
    height: int = 8
    r0: float = 1e-3
    r1: float = 0.5
    r2: float = 2.0

    def __post_init__(self):
        if int(self.ndim) < 1:
            raise ValueError(f"HyperGrid: ndim must be >= 1, got {self.ndim}")
        if int(self.height) < 2:
            raise ValueError(f"HyperGrid: height must be >= 2, got {self.height}")
        if not (self.r0 > 0 and math.isfinite(self.r0)):
            raise ValueError(f"HyperGrid: r0 must be finite and > 0 (log-rewards must be finite), got {self.r0}")
        if not (0 <= self.r1 < math.inf and 0 <= self.r2 < math.inf):
            raise ValueError(f"HyperGrid: r1 and r2 must be finite and >= 0, got r1={self.r1}, r2={self.r2}")

    # sizes
    @property
    def n_actions(self) -> int:
        return self.ndim + 1

    @property
    def n_bwd_actions(self) -> int:
        return self.ndim + 1

    @property
    def max_steps(self) -> int:
        return self.ndim * (self.height - 1) + 1

    @property
    def feature_dim(self) -> int:
        return self.ndim * self.height

    # dynamics
    def init(self, cond=None) -> GridState:
        return GridState(jnp.zeros((self.ndim,), jnp.int32), jnp.asarray(False))

    def forward_mask(self, s: GridState) -> jax.Array:
        inc = (s.pos < self.height - 1) & ~s.done
        return jnp.concatenate([inc, (~s.done)[None]])

    def backward_mask(self, s: GridState) -> jax.Array:
        dec = (s.pos > 0) & ~s.done
        return jnp.concatenate([dec, s.done[None]])

    def step(self, s: GridState, action) -> GridState:
        action = jnp.asarray(action, jnp.int32)
        inc = (jnp.arange(self.ndim) == action).astype(jnp.int32)
        pos = jnp.minimum(s.pos + inc, self.height - 1)
        return GridState(pos, s.done | (action == self.ndim))

    def backward_step(self, s: GridState, bwd_action) -> GridState:
        bwd_action = jnp.asarray(bwd_action, jnp.int32)
        dec = (jnp.arange(self.ndim) == bwd_action).astype(jnp.int32)
        pos = jnp.maximum(s.pos - dec, 0)
        return GridState(pos, s.done & (bwd_action != self.ndim))

    def backward_action(self, s, action):
        return jnp.asarray(action, jnp.int32)

    def forward_action(self, s, bwd_action):
        return jnp.asarray(bwd_action, jnp.int32)

    def is_terminal(self, s: GridState) -> jax.Array:
        return s.done

    def is_initial(self, s: GridState) -> jax.Array:
        return jnp.all(s.pos == 0) & ~s.done

    def features(self, s: GridState) -> jax.Array:
        return jax.nn.one_hot(s.pos, self.height, dtype=jnp.float32).reshape(-1)

    def terminal_value(self, s: GridState) -> jax.Array:
        return s.pos

    # reward (not part of the dynamics)
    def default_params(self) -> dict:
        """The reward weights {"r0", "r1", "r2"} as float32 scalars (from the fields)."""
        return {k: jnp.asarray(getattr(self, k), jnp.float32) for k in ("r0", "r1", "r2")}

    def log_reward(self, params, cond, s: GridState) -> jax.Array:
        """log R(x) of the standard HyperGrid reward with weights ``params`` (None = the
        fields' values); ``cond`` is unused."""
        return jnp.log(self.reward_of_pos(s.pos, params))

    def reward_of_pos(self, pos: jax.Array, params=None) -> jax.Array:
        p = self.default_params() if params is None else params
        ax = jnp.abs(pos.astype(jnp.float32) / (self.height - 1) - 0.5)
        band1 = jnp.all(ax > 0.25, axis=-1)
        band2 = jnp.all((ax > 0.3) & (ax < 0.4), axis=-1)
        return p["r0"] + p["r1"] * band1 + p["r2"] * band2

    def mode_mask(self) -> jax.Array:
        """bool[H^d]: the grid points with the maximal reward (the r2 band), in flat order."""
        r = self.reward_of_pos(self._grid())
        return r >= r.max() - 1e-6

    # enumeration
    def _grid(self) -> jax.Array:
        """int32[H^d, d], row-major (coordinate 0 most significant)."""
        n = self.height ** self.ndim
        idx = jnp.arange(n)
        mult = self.height ** jnp.arange(self.ndim - 1, -1, -1)
        return ((idx[:, None] // mult[None, :]) % self.height).astype(jnp.int32)

    def num_states(self, cond=None) -> int:
        return 2 * self.height ** self.ndim

    def all_states(self, cond=None) -> GridState:
        g = self._grid()
        n = g.shape[0]
        pos = jnp.concatenate([g, g])
        done = jnp.concatenate([jnp.zeros(n, bool), jnp.ones(n, bool)])
        return GridState(pos, done)

    def state_index(self, s: GridState, cond=None) -> jax.Array:
        mult = self.height ** jnp.arange(self.ndim - 1, -1, -1)
        flat = jnp.sum(s.pos * mult)
        return (flat + s.done * self.height ** self.ndim).astype(jnp.int32)

    def num_trajectories_to(self, pos) -> int:
        """Closed form: the number of complete trajectories ending at ``pos`` (multinomial)."""
        pos = [int(p) for p in pos]
        return math.factorial(sum(pos)) // math.prod(math.factorial(p) for p in pos)
