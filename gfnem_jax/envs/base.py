"""The environment contract shared by every task.

An environment is a frozen dataclass of static, hashable settings plus pure functions of a single
(unbatched) state pytree. Batching happens in one place, the rollout (``jax.vmap``); nothing in an
environment is batched. Rewards are *not* part of the dynamics: a log-reward is a separate function
``log_reward(params, cond, state) -> scalar`` so that in EM it can be ``log p_theta(x, z)`` with
``theta`` changing between steps.

Actions are integers. Forward actions are ``0 .. n_actions - 1`` (an environment with a stop action
includes it there); backward actions are ``0 .. n_bwd_actions - 1``. A forward transition
``s -> s' = step(s, a)`` is undone by the backward action ``b = backward_action(s, a)``:
``backward_step(s', b) == s``; conversely ``forward_action(s', b)`` gives back ``a``.

Small instances also give an enumeration of *all* states (terminal ones included) with a dense
index, which ``gfnem_jax.metrics`` uses for exact distributions by dynamic programming.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

State = Any  # a pytree of arrays for one state
Cond = Optional[Any]  # a condition x (e.g. a data point or a sentence), or None


class Environment:
    """Interface of a pure, single-state, static-shape environment.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` so they are hashable and can be passed
    as static arguments to ``jax.jit``.

    Attributes (static):
      n_actions: number of forward actions (including stop, if the task has one).
      n_bwd_actions: number of backward actions.
      max_steps: upper bound on the length of every complete trajectory.
      feature_dim: length of ``features(state)`` (flat environments only).
    """

    # -- static sizes -------------------------------------------------------------------------
    @property
    def n_actions(self) -> int:
        raise NotImplementedError

    @property
    def n_bwd_actions(self) -> int:
        raise NotImplementedError

    @property
    def max_steps(self) -> int:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    # -- dynamics -----------------------------------------------------------------------------
    def init(self, cond: Cond = None) -> State:
        """The initial state s_0 (optionally built from the condition)."""
        raise NotImplementedError

    def forward_mask(self, state: State) -> jax.Array:
        """bool[n_actions]: legal forward actions. All False at terminal states."""
        raise NotImplementedError

    def backward_mask(self, state: State) -> jax.Array:
        """bool[n_bwd_actions]: legal backward actions. All False at the initial state."""
        raise NotImplementedError

    def step(self, state: State, action: jax.Array) -> State:
        """s' = step(s, a). Must return a valid state (never index out of range) even for an
        illegal action, since masked branches are still evaluated under vmap."""
        raise NotImplementedError

    def backward_step(self, state: State, bwd_action: jax.Array) -> State:
        """The parent reached by the backward action."""
        raise NotImplementedError

    def backward_action(self, state: State, action: jax.Array) -> jax.Array:
        """The backward action that undoes forward ``action`` taken from ``state`` (the parent)."""
        raise NotImplementedError

    def forward_action(self, state: State, bwd_action: jax.Array) -> jax.Array:
        """The forward action that leads from ``backward_step(state, bwd_action)`` back to
        ``state`` (the child)."""
        raise NotImplementedError

    def is_terminal(self, state: State) -> jax.Array:
        raise NotImplementedError

    def is_initial(self, state: State) -> jax.Array:
        raise NotImplementedError

    def features(self, state: State) -> jax.Array:
        """float32[feature_dim]: a flat encoding of a state (flat environments)."""
        raise NotImplementedError

    def observe(self, state: State) -> Any:
        """What the policy sees of a state: any pytree (a vector, a set of parts with a mask...).

        Defaults to ``features(state)``; structured environments override it.
        """
        return self.features(state)

    # -- rewards (not part of the dynamics) ---------------------------------------------------
    def default_params(self) -> Any:
        """The numbers that define an instance (reward weights, ...) as a pytree of arrays.

        They are passed to ``log_reward`` rather than stored as static fields, so new values do
        not recompile and can be vmapped or learned. None when an instance has no such numbers.
        """
        return None

    def log_reward(self, params: Any, cond: Cond, state: State) -> jax.Array:
        """float[]: log R of a terminal state, given the instance's ``params`` and condition."""
        raise NotImplementedError

    def terminal_value(self, state: State) -> jax.Array:
        """The object a terminal state stands for, as an array (e.g. grid coordinates)."""
        raise NotImplementedError

    # -- enumeration (small instances only) ---------------------------------------------------
    def num_states(self, cond: Cond = None) -> int:
        raise NotImplementedError

    def all_states(self, cond: Cond = None) -> State:
        """Every state (terminal ones included), batched along a leading axis of size
        ``num_states``, in the order of ``state_index``."""
        raise NotImplementedError

    def state_index(self, state: State, cond: Cond = None) -> jax.Array:
        """int32 index of ``state`` in ``all_states`` (a bijection on reachable states)."""
        raise NotImplementedError


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """log-softmax over the legal entries; illegal entries get a huge negative value.

    Never NaN: a row with no legal entry gives finite (meaningless) values, which the callers
    mask out. exp() of an illegal entry is exactly 0, so it is never sampled.
    """
    neg = jnp.asarray(NEG_INF, logits.dtype)
    z = jnp.where(mask, logits, neg)
    out = jax.nn.log_softmax(z, axis=-1)
    return jnp.where(mask, out, neg)


NEG_INF = -1e9
