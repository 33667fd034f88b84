"""One-pass training (``GFlowNet(one_pass=True)``, ``--one-pass``): differentiating through the
rollout gives the same trajectories, loss and gradient as the rollout followed by ``evaluate``,
for objectives of every kind, with exploration, a learned or uniform P_B, conditions, and through
the loop's global-batch step on 1 device."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import cli, loop, objectives
from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.gflownet import GFlowNet, sampler_update
from gfnem_jax.nets import MLPPolicy
from gfnem_jax.optim import OptimConfig, policy_optimizer
from gfnem_jax.sampling import Exploration

ENV = HyperGrid(2, 4, r0=0.1)
B = 8
# The one-pass terms are the same Evaluation, so the objectives differ only in how they use it:
# balance losses with and without flows, a score-function estimator, importance weights, a
# divergence with a leave-one-out control variate.
NAMES = ("tb", "db", "subtb", "reverse_kl", "forward_kl", "renyi")


def _both(gfn, params, key, cond=None):
    """(loss, grads, traj) of the two-pass path and of the one-pass path."""
    def two(p):
        traj = gfn.rollout(p, key, B, ENV.log_reward, None, cond)
        return gfn.value(gfn.terms(p, traj), traj), traj

    def one(p):
        t, traj = gfn.rollout_terms(p, key, B, ENV.log_reward, None, cond)
        return gfn.value(t, traj), traj

    return [jax.jit(jax.value_and_grad(f, has_aux=True))(params) for f in (two, one)]


@pytest.mark.parametrize("name", NAMES)
def test_one_pass_has_the_loss_and_gradient_of_two_passes(name):
    obj = objectives.get(name, control_variate="loo")
    explore = Exploration(1.0, 0.0) if name in ("reverse_kl", "renyi", "tsallis", "alpha_kl") \
        else Exploration(1.5, 0.1)
    pol = MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=16, uniform_pb=name == "tb")
    gfn = GFlowNet(ENV, pol, obj, explore)
    params = gfn.init(jax.random.PRNGKey(0))
    ((l2, t2), g2), ((l1, t1), g1) = _both(gfn, params, jax.random.PRNGKey(7))
    assert np.array_equal(np.asarray(t1.actions), np.asarray(t2.actions))   # the same draws
    np.testing.assert_allclose(np.asarray(t1.log_pi), np.asarray(t2.log_pi), atol=1e-6)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g1))


def test_one_pass_with_conditions_and_through_the_loop_step():
    """A conditional policy (log Z(x) a function of the condition) in ``sampler_update``: the
    loop's step (prepare -> terms -> reduce) gives the same update either way."""
    pol = MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=16, conditional=True)
    cond = jax.random.normal(jax.random.PRNGKey(1), (B, 3))
    states = []
    for one_pass in (False, True):
        gfn = GFlowNet(ENV, pol, objectives.subtb(lam=0.9), one_pass=one_pass)
        params = gfn.init(jax.random.PRNGKey(0), cond[0])
        tx = policy_optimizer(gfn, OptimConfig(1e-3, 1e-1, 0.0), params)
        upd = sampler_update(gfn, tx, B, lambda rp, c, s: ENV.log_reward(ENV.default_params(), c, s),
                             cond_fn=lambda b: b)
        step = jax.jit(loop.make_step(upd, None, loop.Schedule("sampler")))
        st = loop.init_state(params, tx, None, None, jax.random.PRNGKey(2))
        st, m = step(st, cond, jax.random.PRNGKey(3))
        states.append((st, m))
    (a, ma), (b, mb) = states
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a.sampler), jax.tree.leaves(b.sampler)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_one_pass_refuses_flow_matching():
    pol = MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=8)
    with pytest.raises(ValueError, match="one_pass"):
        GFlowNet(ENV, pol, objectives.get("fm"), one_pass=True)


def test_cli_one_pass_trains_and_matches_two_passes(tmp_path, capsys):
    args = ["train", "hypergrid", "--ndim", "2", "--height", "3", "--r0", "0.1", "--steps", "4",
            "--log-every", "2", "--batch-size", "8", "--hidden", "8", "--quiet"]
    rows = {}
    for flag in ([], ["--one-pass"]):
        out = tmp_path / ("one" if flag else "two")
        cli.main(args + flag + ["--out", str(out)])
        rows[bool(flag)] = [json.loads(l) for l in open(out / "metrics.jsonl")]
        assert json.load(open(out / "config.json"))["one_pass"] is bool(flag)
    for a, b in zip(rows[False], rows[True]):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-4 * max(1, abs(a["loss"]))
        assert abs(a["l1"] - b["l1"]) < 1e-4
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(args + ["--one-pass", "--loss", "fm", "--out", str(tmp_path / "fm")])
    assert e.value.code == 2 and "--one-pass" in capsys.readouterr().err
