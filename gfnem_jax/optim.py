"""Optimizers: Adam for a policy, with log Z on its own learning rate (as is usual for TB).

The log Z leaves are those the policy declares (``Policy.log_z_mask``), never found by name.
"""
from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    lr_logz: float = 0.05
    grad_clip: float = 0.0  # global-norm clipping; 0 = off
    lr_drop: float = 1.0  # both learning rates times lr_drop from update drop_at on (1 = constant)
    drop_at: int = 0


def make_optimizer(cfg: OptimConfig, logz_mask) -> optax.GradientTransformation:
    """Adam at ``cfg.lr`` on the policy and at ``cfg.lr_logz`` on the leaves where ``logz_mask``
    (a pytree of bool like the parameters) is True, both times ``cfg.lr_drop`` from update
    ``cfg.drop_at`` on when ``lr_drop < 1``; optional global-norm clipping first."""
    labels = jax.tree.map(lambda m: "logz" if m else "policy", logz_mask)

    def rate(lr):
        if cfg.lr_drop >= 1:
            return lr
        return optax.piecewise_constant_schedule(lr, {max(1, int(cfg.drop_at)): cfg.lr_drop})

    tx = optax.multi_transform({"policy": optax.adam(rate(cfg.lr)),
                                "logz": optax.adam(rate(cfg.lr_logz))}, labels)
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def policy_optimizer(gfn, cfg: OptimConfig, params) -> optax.GradientTransformation:
    """``make_optimizer`` with the log Z leaves declared by ``gfn.policy``; for an objective with
    ``needs_target`` (soft Q-learning), wrapped in ``loop.with_target`` at the objective's rate
    ``tau`` so that its state keeps the target network."""
    tx = make_optimizer(cfg, gfn.policy.log_z_mask(params))
    if gfn.objective.needs_target:
        from gfnem_jax.loop import with_target
        tx = with_target(tx, gfn.objective.tau)
    return tx
