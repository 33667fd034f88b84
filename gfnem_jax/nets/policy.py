"""The policy contract: a record of pure functions, any implementation.

A GFlowNet's policy maps one state's observation (any pytree: a vector, a set of parts with a
mask, ...) and the encoded condition of its trajectory to a ``PolicyOutput``:

    init(key, obs, cond) -> params          obs = env.observe(one state); cond: one condition or None
    encode_cond(params, cond) -> ctx        one condition -> context pytree; run ONCE per trajectory
    apply(params, obs, ctx) -> PolicyOutput one state (unbatched; the library vmaps)
    apply_forward(params, obs, ctx)         the sampling pass; only fwd_logits need be meaningful
    log_z(params, ctx) -> float[]           log Z, a scalar parameter or a function of the context
    log_z_mask(params) -> pytree of bool    True on the leaves that are log Z (own learning rate)

Everything is unbatched: batching is ``jax.vmap`` in the rollout and the evaluation pass, never
inside a policy. Illegal actions are masked by the library (``masked_log_softmax``), so a policy
returns raw logits over every action.

Implementations are frozen dataclasses (hashable, static under ``jax.jit``): subclass ``Policy``
(``gfnem_jax.nets.mlp.MLPPolicy``; a transformer over parts elsewhere), or wrap plain functions
in ``FunctionalPolicy``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class PolicyOutput(NamedTuple):
    """fwd_logits float[n_actions]; bwd_logits float[n_bwd_actions]; log_flow float[] (log F(s))."""

    fwd_logits: jax.Array
    bwd_logits: jax.Array
    log_flow: jax.Array


class Policy:
    """Interface (see the module docstring). Subclasses are ``@dataclasses.dataclass(frozen=True)``."""

    def init(self, key: jax.Array, obs: Any, cond: Any = None) -> Any:
        raise NotImplementedError

    def encode_cond(self, params: Any, cond: Any) -> Any:
        """Default: the condition itself (None for unconditional policies)."""
        return cond

    def apply(self, params: Any, obs: Any, ctx: Any) -> PolicyOutput:
        raise NotImplementedError

    def apply_forward(self, params: Any, obs: Any, ctx: Any) -> PolicyOutput:
        """The sampling pass; defaults to ``apply``."""
        return self.apply(params, obs, ctx)

    def log_z(self, params: Any, ctx: Any) -> jax.Array:
        raise NotImplementedError

    def log_z_mask(self, params: Any) -> Any:
        """pytree of bool like ``params``: True on the log Z leaves. Default: none."""
        return jax.tree.map(lambda _: False, params)


@dataclasses.dataclass(frozen=True)
class FunctionalPolicy(Policy):
    """A policy given as plain functions (fields named as the interface's methods).

    encode_cond, apply_forward and log_z_mask are optional. Hashing is by function identity, so
    build one instance per run and reuse it (a new instance retraces jitted functions).
    """

    init_fn: Callable[..., Any]
    apply_fn: Callable[..., PolicyOutput]
    log_z_fn: Callable[..., jax.Array]
    encode_cond_fn: Optional[Callable[..., Any]] = None
    apply_forward_fn: Optional[Callable[..., PolicyOutput]] = None
    log_z_mask_fn: Optional[Callable[..., Any]] = None

    def init(self, key, obs, cond=None):
        return self.init_fn(key, obs, cond)

    def encode_cond(self, params, cond):
        return cond if self.encode_cond_fn is None else self.encode_cond_fn(params, cond)

    def apply(self, params, obs, ctx):
        return self.apply_fn(params, obs, ctx)

    def apply_forward(self, params, obs, ctx):
        f = self.apply_forward_fn or self.apply_fn
        return f(params, obs, ctx)

    def log_z(self, params, ctx):
        return self.log_z_fn(params, ctx)

    def log_z_mask(self, params):
        if self.log_z_mask_fn is None:
            return super().log_z_mask(params)
        return self.log_z_mask_fn(params)


def encode_batch(policy: Policy, params, cond):
    """ctx for a batch of conditions (leading axis B): ``encode_cond`` vmapped once. None -> None."""
    if cond is None:
        return None
    return jax.vmap(policy.encode_cond, (None, 0))(params, cond)


def flatten_cond(cond) -> Optional[jax.Array]:
    """One condition pytree as a flat float32 vector (leaves raveled and concatenated)."""
    if cond is None:
        return None
    leaves = jax.tree.leaves(cond)
    return jnp.concatenate([jnp.ravel(l).astype(jnp.float32) for l in leaves])
