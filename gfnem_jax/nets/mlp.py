"""MLP policy: forward-logit, backward-logit, state-flow and log Z heads on a flat observation.

``MLPPolicy`` implements ``gfnem_jax.nets.policy.Policy`` for environments whose observation is a
vector ``float32[feature_dim]``. A condition (any pytree) is flattened to a vector and
concatenated to the observation; log Z is a learned scalar (unconditional) or an MLP of the
condition (conditional GFlowNets, e.g. the posterior q(z | x) of GFlowNet-EM).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.nets.policy import Policy, PolicyOutput, flatten_cond
from gfnem_jax.startup import compiled_method

LOGZ_NAMES = ("log_z", "logz_net", "logz_head")


class _Torso(nn.Module):
    hidden: int
    n_layers: int

    @nn.compact
    def __call__(self, h):
        for i in range(self.n_layers):
            h = nn.leaky_relu(nn.Dense(self.hidden, name=f"dense_{i}")(h))
        return h


class MLPNet(nn.Module):
    """The flax network behind ``MLPPolicy`` (leading batch dimensions allowed)."""

    n_actions: int
    n_bwd_actions: int
    hidden: int = 256
    n_layers: int = 2
    uniform_pb: bool = False
    shared_torso: bool = True
    conditional: bool = False

    def setup(self):
        self.torso = _Torso(self.hidden, self.n_layers)
        if not self.shared_torso:
            self.torso_b = _Torso(self.hidden, self.n_layers)
        self.fwd_head = nn.Dense(self.n_actions)
        if not self.uniform_pb:
            self.bwd_head = nn.Dense(self.n_bwd_actions)
        self.flow_head = nn.Dense(1)
        if self.conditional:
            self.logz_net = _Torso(self.hidden, 1)
            self.logz_head = nn.Dense(1, kernel_init=nn.initializers.zeros)
        else:
            self.logz_param = self.param("log_z", nn.initializers.zeros, ())

    def _input(self, feats, cond):
        if self.conditional:
            if cond is None:
                raise ValueError("MLPPolicy(conditional=True) needs a condition")
            cond = jnp.broadcast_to(cond, feats.shape[:-1] + cond.shape[-1:])
            return jnp.concatenate([feats, cond.astype(feats.dtype)], axis=-1)
        return feats

    def __call__(self, feats, cond=None) -> PolicyOutput:
        h_in = self._input(feats, cond)
        h = self.torso(h_in)
        hb = h if self.shared_torso else self.torso_b(h_in)
        fwd = self.fwd_head(h)
        if self.uniform_pb:
            bwd = jnp.zeros(feats.shape[:-1] + (self.n_bwd_actions,), fwd.dtype)
        else:
            bwd = self.bwd_head(hb)
        return PolicyOutput(fwd, bwd, self.flow_head(hb)[..., 0])

    def forward_only(self, feats, cond=None) -> PolicyOutput:
        """Forward logits only (skips P_B's torso); bwd_logits and log_flow are zeros."""
        fwd = self.fwd_head(self.torso(self._input(feats, cond)))
        return PolicyOutput(fwd, jnp.zeros(feats.shape[:-1] + (self.n_bwd_actions,), fwd.dtype),
                            jnp.zeros(feats.shape[:-1], fwd.dtype))

    def log_z(self, cond=None):
        if self.conditional:
            return self.logz_head(self.logz_net(cond))[..., 0]
        return self.logz_param

    def _init_all(self, feats, cond=None):
        return self(feats, cond), self.log_z(cond)


@dataclasses.dataclass(frozen=True)
class MLPPolicy(Policy):
    """MLP policy.

    Attributes:
      n_actions, n_bwd_actions: sizes of the forward / backward action spaces.
      hidden, n_layers: width and depth of the torso.
      uniform_pb: constant zero backward logits (uniform P_B over legal actions), no P_B head.
      shared_torso: False gives P_B and the flow head their own torso (torchgfn's default).
      conditional: the policy and log Z take the condition (flattened to a vector).
    """

    n_actions: int
    n_bwd_actions: int
    hidden: int = 256
    n_layers: int = 2
    uniform_pb: bool = False
    shared_torso: bool = True
    conditional: bool = False

    @property
    def net(self) -> MLPNet:
        return MLPNet(self.n_actions, self.n_bwd_actions, self.hidden, self.n_layers,
                      self.uniform_pb, self.shared_torso, self.conditional)

    @compiled_method
    def init(self, key, obs, cond=None):
        ctx = self.encode_cond(None, cond) if self.conditional else None
        c = None if ctx is None else ctx[None]
        return self.net.init(key, jnp.asarray(obs, jnp.float32)[None], c, method=MLPNet._init_all)

    def encode_cond(self, params, cond):
        return flatten_cond(cond) if self.conditional else None

    def apply(self, params, obs, ctx):
        return self.net.apply(params, obs, ctx)

    def apply_forward(self, params, obs, ctx):
        return self.net.apply(params, obs, ctx, method=MLPNet.forward_only)

    def log_z(self, params, ctx):
        return self.net.apply(params, ctx, method=MLPNet.log_z)

    def log_z_mask(self, params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(k, "key", None) in LOGZ_NAMES for k in path), params)

    def flops(self, feature_dim: int, cond_dim: int = 0, forward_only: bool = False) -> int:
        """FLOPs (2 per multiply-add) of one pass on one state (``forward_only``: the sampling pass)."""
        d_in = feature_dim + (cond_dim if self.conditional else 0)
        h, L = self.hidden, self.n_layers

        def torso(d):
            return 2 * (d * h + (L - 1) * h * h)

        if forward_only:
            return int(torso(d_in) + 2 * h * self.n_actions)
        f = torso(d_in) * (1 if self.shared_torso else 2)
        f += 2 * h * self.n_actions + 2 * h * 1
        if not self.uniform_pb:
            f += 2 * h * self.n_bwd_actions
        return int(f)
