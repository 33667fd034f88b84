"""Binary vectors of length d built one bit at a time, in any order (EB-GFN, Zhang et al. 2022).

State: ``bits`` int32[d], -1 where the bit is not set yet, else 0 or 1.
Forward action ``a = 2 i + v`` (2d actions) sets unset position i to value v.
Backward action ``b = i`` (d actions) unsets a set position i.
A state is terminal when every bit is set; every complete trajectory has exactly d steps, so the
state graph is graded (depth = number of set bits) and a state at depth n has n! paths from s_0.

Rewards: ``log_reward(params, cond, state) = -E_phi(x) / temperature`` with ``E_phi`` given by the
``energy`` field (any hashable object with ``energy(params, x float32[d]) -> float[]``, such as
``gfnem_jax.models.energy.EnergyModel``) and ``params`` its parameters (learned, not static).

Enumeration:
  terminals  2^d vectors, index = the bits read as a binary number, first bit most significant
             (``all_terminals`` / ``terminal_index``; the order of ``energies.npy``);
  all states 3^d states (d <= MAX_ENUM_D), index = base-3 number of (bits + 1), first most
             significant (``all_states`` / ``state_index``), for the exact DP of gfnem_jax.metrics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gfnem_jax.envs.base import Environment

MAX_ENUM_D = 10  # all_states: 3^10 = 59049 states
MAX_TERMINAL_D = 24  # all_terminals: 2^24 vectors


class BitsState(NamedTuple):
    bits: jax.Array  # int32[d], -1 = unset


@dataclasses.dataclass(frozen=True)
class Bits(Environment):
    """Bits(d, energy=None, temperature=1.0).

    observe / features: float32[3d], per position the one-hot of (unset, 0, 1).
    """

    d: int = 8
    energy: Any = None
    temperature: float = 1.0

    def __post_init__(self):
        if int(self.d) < 1:
            raise ValueError(f"Bits: d must be >= 1, got {self.d}")
        if not self.temperature > 0:
            raise ValueError(f"Bits: temperature must be > 0, got {self.temperature}")

    # sizes
    @property
    def n_actions(self) -> int:
        return 2 * self.d

    @property
    def n_bwd_actions(self) -> int:
        return self.d

    @property
    def max_steps(self) -> int:
        return self.d

    @property
    def feature_dim(self) -> int:
        return 3 * self.d

    # dynamics
    def init(self, cond=None) -> BitsState:
        return BitsState(jnp.full((self.d,), -1, jnp.int32))

    def forward_mask(self, s: BitsState) -> jax.Array:
        return jnp.repeat(s.bits < 0, 2)

    def backward_mask(self, s: BitsState) -> jax.Array:
        return s.bits >= 0

    def step(self, s: BitsState, action) -> BitsState:
        a = jnp.asarray(action, jnp.int32)
        i, v = jnp.clip(a // 2, 0, self.d - 1), a % 2
        ok = s.bits[i] < 0
        return BitsState(s.bits.at[i].set(jnp.where(ok, v, s.bits[i])))

    def backward_step(self, s: BitsState, bwd_action) -> BitsState:
        i = jnp.clip(jnp.asarray(bwd_action, jnp.int32), 0, self.d - 1)
        return BitsState(s.bits.at[i].set(-1))

    def backward_action(self, s, action):
        return (jnp.asarray(action, jnp.int32) // 2).astype(jnp.int32)

    def forward_action(self, s, bwd_action):
        i = jnp.clip(jnp.asarray(bwd_action, jnp.int32), 0, self.d - 1)
        return (2 * i + jnp.maximum(s.bits[i], 0)).astype(jnp.int32)

    def is_terminal(self, s: BitsState) -> jax.Array:
        return jnp.all(s.bits >= 0)

    def is_initial(self, s: BitsState) -> jax.Array:
        return jnp.all(s.bits < 0)

    def features(self, s: BitsState) -> jax.Array:
        return jax.nn.one_hot(s.bits + 1, 3, dtype=jnp.float32).reshape(-1)

    def terminal_value(self, s: BitsState) -> jax.Array:
        """int32[d] in {0, 1} (unset bits read as 0)."""
        return jnp.maximum(s.bits, 0)

    # reward
    def default_params(self):
        return None

    def log_reward(self, params, cond, s: BitsState) -> jax.Array:
        """-E_phi(x) / temperature, x = the bits as float32[d]."""
        if self.energy is None:
            raise ValueError("Bits: log_reward needs an energy model (the energy field is None)")
        x = self.terminal_value(s).astype(jnp.float32)
        return -self.energy.energy(params, x) / self.temperature

    @staticmethod
    def from_bits(x) -> BitsState:
        """The terminal state(s) of {0,1} vector(s) x[..., d] (any integer or float dtype)."""
        return BitsState(jnp.asarray(x).astype(jnp.int32))

    # enumeration of terminal states (2^d)
    def all_terminals(self) -> BitsState:
        """Every terminal state, [2^d] batched, in ``terminal_index`` order."""
        if self.d > MAX_TERMINAL_D:
            raise ValueError(f"Bits: terminal enumeration needs d <= {MAX_TERMINAL_D}, got {self.d}")
        return BitsState(all_binary(self.d).astype(jnp.int32))

    def terminal_index(self, s: BitsState) -> jax.Array:
        """The bits read as a binary number, first bit most significant (int32)."""
        w = 2 ** jnp.arange(self.d - 1, -1, -1)
        return jnp.sum(jnp.maximum(s.bits, 0) * w).astype(jnp.int32)

    # enumeration of every state (3^d)
    def _check_enum(self):
        if self.d > MAX_ENUM_D:
            raise ValueError(f"Bits: enumerating all 3^d states needs d <= {MAX_ENUM_D}, got {self.d}")

    def num_states(self, cond=None) -> int:
        self._check_enum()
        return 3 ** self.d

    def all_states(self, cond=None) -> BitsState:
        self._check_enum()
        n = 3 ** self.d
        mult = 3 ** jnp.arange(self.d - 1, -1, -1)
        digits = (jnp.arange(n)[:, None] // mult[None, :]) % 3
        return BitsState((digits - 1).astype(jnp.int32))

    def state_index(self, s: BitsState, cond=None) -> jax.Array:
        mult = 3 ** jnp.arange(self.d - 1, -1, -1)
        return jnp.sum((s.bits + 1) * mult).astype(jnp.int32)

    def terminal_state_indices(self) -> jax.Array:
        """int32[2^d]: ``state_index`` of each terminal, in ``terminal_index`` order."""
        return jax.vmap(self.state_index)(self.all_terminals())


def all_binary(d: int) -> jax.Array:
    """uint8[2^d, d]: every {0,1} vector, row r = r in binary, first column most significant."""
    r = jnp.arange(2 ** d, dtype=jnp.int32)
    return ((r[:, None] >> jnp.arange(d - 1, -1, -1)[None, :]) & 1).astype(jnp.uint8)
