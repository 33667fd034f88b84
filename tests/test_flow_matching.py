"""Flow matching through the environment's parents: zero at exact edge flows, trains by name."""
import jax
import jax.numpy as jnp
import pytest

from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax import objectives
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput
from gfnem_jax.sampling import forward_rollout

from _exact_policy import exact_hypergrid_policy


def _gfn_with(apply_fn, env):
    pol = FunctionalPolicy(lambda k, o, c: None, apply_fn, lambda p, c: jnp.float32(0.0))
    return GFlowNet(env, pol, objectives.fm())


def test_fm_vanishes_at_exact_edge_flows_and_not_elsewhere():
    env = HyperGrid(2, 4, r0=0.05)
    apply_exact, _, _, _ = exact_hypergrid_policy(env)

    def edge_flows(params, feats, cond=None):  # log F(s -> s') = log F(s) + log P_F(s'|s)
        out = apply_exact.apply(None, feats, cond)
        return PolicyOutput(out.fwd_logits + out.log_flow[..., None] + params, out.bwd_logits, out.log_flow)

    gfn = _gfn_with(edge_flows, env)
    traj = forward_rollout(env, apply_exact, None, jax.random.PRNGKey(0), 64, env.log_reward)
    assert float(gfn.traj_loss(jnp.float32(0.0), traj)) < 1e-9
    # scaling every edge flow by e^0.3 breaks the balance at terminal states only
    assert float(gfn.traj_loss(jnp.float32(0.3), traj)) > 1e-3


def test_fm_trains_by_name(tmp_path):
    from gfnem_jax.experiments import runner
    res = runner.run(dict(task="hypergrid", env=dict(ndim=2, height=4, r0=0.1, r1=0.5, r2=2.0),
                          loss="fm", steps=300, batch_size=32, hidden=64, log_every=150, lr=1e-3),
                     str(tmp_path / "r"), progress=False)
    assert res["final"]["l1"] < 0.15
