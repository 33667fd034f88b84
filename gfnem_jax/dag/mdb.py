"""The modified detailed balance of DAG-GFlowNet (Deleu et al. 2022) as detailed balance with a
state flow fixed by the reward and the stop probability.

In the DAG environment every non-terminal graph s can stop (to its terminal copy, of reward
R(s)), so the flow through the stop edge gives F(s) P_F(stop | s) = R(s) at the optimum. Setting

    log F(s) = log R(s) - log P_F(stop | s)

(instead of a learned flow head) makes detailed balance on the stop transition hold identically,
and on an edge-adding transition s -> s' it becomes DAG-GFlowNet's modified condition

    log R(s') - log R(s) + log P_B(s | s') + log P_F(stop | s) = log P_F(s' | s) + log P_F(stop | s'),

which depends on the reward only through the delta score log R(s') - log R(s) (one local score
of the child of the added edge). ``DeltaFlowPolicy`` is an ``MLPPolicy`` whose ``log_flow`` is
that expression, computed from the observation (``DAGEnv.features``: adjacency, legal-edge mask,
done) and the environment's reward; trained with loss ``db`` it is modified DB, with
``subtb`` a modified SubTB. The gradient flows through log P_F(stop | s) as in DAG-GFlowNet.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from gfnem_jax.envs.base import masked_log_softmax
from gfnem_jax.envs.dag import DAGEnv
from gfnem_jax.nets.mlp import MLPPolicy


@dataclasses.dataclass(frozen=True)
class DeltaFlowPolicy(MLPPolicy):
    """MLPPolicy with log_flow(s) = log R(s) - log P_F(stop | s) (see the module).

    Extra attribute: env (the ``DAGEnv`` whose reward, with its default parameters, the flow
    uses).
    """

    env: Optional[DAGEnv] = None

    def flow_of(self, fwd_logits, obs):
        """log R(s) - log P_F(stop | s) for one observation float[2 d^2 + 1] and its logits."""
        d = self.env.d
        adj = obs[: d * d].reshape(d, d) > 0.5
        mask = jnp.concatenate([obs[d * d: 2 * d * d] > 0.5, (obs[-1] < 0.5)[None]])
        log_r = jnp.sum(self.env.local_scores(None, adj))
        return log_r - masked_log_softmax(fwd_logits, mask)[d * d]

    def apply(self, params, obs, ctx):
        out = super().apply(params, obs, ctx)
        return out._replace(log_flow=self.flow_of(out.fwd_logits, obs))
