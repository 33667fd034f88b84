"""The discrete VAE's encoder q(z | x) as a GFlowNet policy over the code grid (raster order).

Environment: ``gfnem_jax.envs.sequence.Sequence(length=L, vocab=K)``, L = G*G; its observation
is ``features(state)`` = one-hot float[L*K] of the codes placed so far (zeros where unset); the
state graph is a tree (P_B = 1, so ``bwd_logits`` is a constant).

``DVAEEncoder`` implements ``gfnem_jax.nets.policy.Policy``:

  encode_cond(params, x) -> ctx   ONCE per image: ``ImageEncoder`` CNN features f float[L, c]
      (one per grid cell) and a global vector g = Dense(flatten f) float[d];
      ctx = {"cells": f, "glob": g}.
  apply(params, obs, ctx)         n = number of codes placed (sum of obs); the state MLP sees
      [obs; onehot(n); f_n; g] (autoregressive) or [onehot(n); f_n; g] (``autoregressive=False``:
      the factorised encoder q(z | x) = prod_i q(z_i | x), logits independent of z_<n);
      fwd_logits float[K], bwd_logits zeros[1], log_flow float[] (for DB / SubTB).
  log_z(params, ctx)              a scalar parameter "log_z" (the paper) or, with
      ``conditional_logz``, an MLP of g; ``log_z_mask`` marks it by name.

Exact q(z | x) = prod_n softmax(fwd_logits(s_n))[z_n] = exp(sum of the trajectory's log P_F).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.models.dvae import ImageEncoder
from gfnem_jax.nets.policy import Policy, PolicyOutput
from gfnem_jax.startup import compiled_method

LOGZ_NAMES = ("log_z", "logz_net")


class _EncoderNet(nn.Module):
    grid: int
    codes: int
    channels: int
    ctx_dim: int
    hidden: int
    n_layers: int
    autoregressive: bool
    conditional_logz: bool

    def setup(self):
        self.cnn = ImageEncoder(self.grid, self.channels, self.channels)
        self.glob = nn.Dense(self.ctx_dim)
        self.torso = [nn.Dense(self.hidden) for _ in range(self.n_layers)]
        self.fwd_head = nn.Dense(self.codes)
        self.flow_head = nn.Dense(1)
        if self.conditional_logz:
            self.logz_net = [nn.Dense(self.hidden), nn.Dense(1, kernel_init=nn.initializers.zeros)]
        else:
            self.log_z_param = self.param("log_z", nn.initializers.zeros, ())

    def encode(self, x):
        L = self.grid * self.grid
        f = self.cnn(x).reshape(L, -1)
        return {"cells": f, "glob": nn.relu(self.glob(f.reshape(-1)))}

    def state(self, obs, ctx):
        L = self.grid * self.grid
        n = jnp.clip(jnp.round(jnp.sum(obs)).astype(jnp.int32), 0, L - 1)
        parts = [jax.nn.one_hot(n, L), ctx["cells"][n], ctx["glob"]]
        if self.autoregressive:
            parts = [obs.astype(jnp.float32)] + parts
        h = jnp.concatenate(parts)
        for d in self.torso:
            h = nn.leaky_relu(d(h))
        fwd = self.fwd_head(h)
        return PolicyOutput(fwd, jnp.zeros((1,), fwd.dtype), self.flow_head(h)[0])

    def logz(self, ctx):
        if self.conditional_logz:
            return self.logz_net[1](nn.relu(self.logz_net[0](ctx["glob"])))[0]
        return self.log_z_param

    def __call__(self, obs, x):
        ctx = self.encode(x)
        return self.state(obs, ctx), self.logz(ctx)


@dataclasses.dataclass(frozen=True)
class DVAEEncoder(Policy):
    """See the module docstring. The condition is one image float[H, W]."""

    grid: int = 4
    codes: int = 8
    channels: int = 32
    ctx_dim: int = 128
    hidden: int = 256
    n_layers: int = 2
    autoregressive: bool = True
    conditional_logz: bool = False

    @property
    def net(self) -> _EncoderNet:
        return _EncoderNet(self.grid, self.codes, self.channels, self.ctx_dim, self.hidden,
                           self.n_layers, self.autoregressive, self.conditional_logz)

    @compiled_method
    def init(self, key, obs, cond=None):
        if cond is None:
            raise ValueError("DVAEEncoder.init needs an example condition (an image [H, W])")
        return self.net.init(key, jnp.asarray(obs, jnp.float32), jnp.asarray(cond, jnp.float32))

    def encode_cond(self, params, cond):
        return self.net.apply(params, jnp.asarray(cond, jnp.float32), method=_EncoderNet.encode)

    def apply(self, params, obs, ctx) -> PolicyOutput:
        return self.net.apply(params, obs, ctx, method=_EncoderNet.state)

    def log_z(self, params, ctx):
        return self.net.apply(params, ctx, method=_EncoderNet.logz)

    def log_z_mask(self, params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(str(getattr(k, "key", "")).startswith(LOGZ_NAMES) for k in path),
            params)


@dataclasses.dataclass(frozen=True)
class PrecomputedContext(Policy):
    """``policy`` with its condition already encoded: the condition *is* the context.

    Used when many trajectories share one condition (importance sampling: S samples per image):
    encode once with ``policy.encode_cond``, broadcast ctx, and roll out with this wrapper so the
    library's per-trajectory ``encode_cond`` is the identity.
    """

    policy: Policy

    def init(self, key, obs, cond=None):
        raise ValueError("PrecomputedContext wraps trained parameters; init the inner policy")

    def encode_cond(self, params, cond):
        return cond

    def apply(self, params, obs, ctx):
        return self.policy.apply(params, obs, ctx)

    def apply_forward(self, params, obs, ctx):
        return self.policy.apply_forward(params, obs, ctx)

    def log_z(self, params, ctx):
        return self.policy.log_z(params, ctx)

    def log_z_mask(self, params):
        return self.policy.log_z_mask(params)


def image_shape_ok(shape: Tuple[int, int], grid: int) -> None:
    """Raise ValueError when a G x G grid does not fit the images."""
    if grid < 1 or grid > min(shape):
        raise ValueError(f"grid must be in [1, {min(shape)}] for images of shape {tuple(shape)}, got {grid}")
