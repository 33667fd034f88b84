"""docs/adding.rst, executed: its environment is exact, and its run kind trains and samples
through the CLI after one registry line."""
from __future__ import annotations

import json
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "adding.rst")


def _block(name: str) -> str:
    text = open(DOC).read()
    m = re.search(r"\.\. code-block:: python\n   :name: " + name + r"\n\n((?:   .*\n|\n)+)", text)
    assert m, f"no code block {name} in docs/adding.rst"
    return "\n".join(line[3:] for line in m.group(1).splitlines())


@pytest.fixture(scope="module")
def bits_kind():
    """The page's task module, importable as gfnem_jax.experiments.bits and registered."""
    from gfnem_jax import experiments
    mod = types.ModuleType("gfnem_jax.experiments.bits")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up while the code runs
    code = "\n".join(_block(b) for b in ("adding-env", "adding-kind", "adding-objective"))
    exec(compile(code, DOC, "exec"), mod.__dict__)
    experiments.KINDS["bits"] = mod.__name__
    yield mod
    from gfnem_jax import objectives
    del experiments.KINDS["bits"], objectives.OBJECTIVES["huber_tb"]
    del sys.modules[mod.__name__]


def test_environment_is_exact(bits_kind):
    """Enumeration is a bijection, parents undo children, and R/Z is the product of independent
    bits with P(1) = e^beta / (1 + e^beta)."""
    from gfnem_jax import metrics
    env = bits_kind.Bits(3, 0.7)
    states = env.all_states()
    idx = jax.vmap(env.state_index)(states)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(env.num_states()))
    table = metrics.transition_table(env)
    target = np.asarray(metrics.target_distribution(env, env.log_reward, None, table))
    ti = np.asarray(env.terminal_indices())
    bits = np.asarray(states.bits)[ti]
    p1 = np.exp(0.7) / (1 + np.exp(0.7))
    exact = np.prod(np.where(bits == 1, p1, 1 - p1), axis=1)
    np.testing.assert_allclose(target[ti], exact, rtol=1e-5, atol=1e-7)
    for a in (0, 1):
        child = jax.vmap(lambda s: env.step(s, a))(states)
        back = jax.vmap(lambda s: env.backward_step(s, jnp.int32(0)))(child)
        live = ~np.asarray(jax.vmap(env.is_terminal)(states))
        np.testing.assert_array_equal(np.asarray(back.bits)[live], np.asarray(states.bits)[live])


def test_run_kind_trains_and_samples_from_the_cli(bits_kind, tmp_path, capsys):
    from gfnem_jax import cli
    out = str(tmp_path / "run")
    cli.main(["train", "bits", "--n", "3", "--beta", "0.7", "--steps", "300", "--batch-size",
              "16", "--hidden", "32", "--log-every", "100", "--lr", "1e-3", "--out", out,
              "--quiet"])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 300 and final["l1"] < 0.15, final
    cli.main(["sample", "--run", out, "--n", "4000", "--seed", "2", "--out",
              str(tmp_path / "x.npy")])
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (4000, 3) and set(np.unique(x)) <= {0, 1}
    p1 = np.exp(0.7) / (1 + np.exp(0.7))
    assert abs(x.mean() - p1) < 0.08  # the sampler's L1 to R/Z is < 0.15


def test_objective_is_half_tb_near_balance_and_trains(bits_kind):
    """HuberTB = TB / 2 where every |residual| <= delta, linear beyond; trained with the library's
    own step (loop.make_step, gflownet.sampler_update) it reaches the exact target."""
    import optax
    from gfnem_jax import loop, metrics, objectives
    from gfnem_jax.gflownet import GFlowNet, sampler_update
    from gfnem_jax.nets.mlp import MLPPolicy
    from gfnem_jax.optim import OptimConfig, policy_optimizer
    from gfnem_jax.sampling import Evaluation, Trajectories
    huber = objectives.get("huber_tb", delta=1e6)
    assert isinstance(huber, bits_kind.HuberTB) and huber.needs_log_z and huber.balance
    rng = np.random.default_rng(0)
    ev = Evaluation(jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                    jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), jnp.zeros((5, 4)))
    traj = Trajectories(*([None] * len(Trajectories._fields)))._replace(
        log_reward=jnp.asarray(rng.normal(size=5), jnp.float32))
    tb = objectives.tb()(ev, traj, jnp.float32(0.3))
    np.testing.assert_allclose(float(huber(ev, traj, jnp.float32(0.3))), 0.5 * float(tb), rtol=1e-6)
    far = bits_kind.HuberTB(delta=1e-3)(ev, traj, jnp.float32(0.3))
    d = 0.3 + np.asarray(ev.log_pf).sum(1) - np.asarray(traj.log_reward) - np.asarray(ev.log_pb).sum(1)
    np.testing.assert_allclose(float(far), np.mean(1e-3 * (np.abs(d) - 0.5e-3)), rtol=1e-5)
    with pytest.raises(ValueError, match="delta"):
        bits_kind.HuberTB(delta=0.0)

    env = bits_kind.Bits(3, 0.7)
    gfn = GFlowNet(env, MLPPolicy(2, 1, hidden=32), bits_kind.HuberTB(delta=2.0))
    params = gfn.init(jax.random.PRNGKey(0))
    tx = policy_optimizer(gfn, OptimConfig(1e-3, 0.05), params)
    step = loop.make_step(sampler_update(gfn, tx, 16, env.log_reward), None, loop.Schedule("sampler"))
    state = loop.init_state(params, tx, None, None, jax.random.PRNGKey(1))
    state, _ = loop.make_chunk(step, 300)(state)
    table = metrics.transition_table(env)
    target = metrics.target_distribution(env, env.log_reward, None, table)
    p = metrics.terminal_distribution(env, gfn.policy, state.sampler, table)
    assert float(metrics.l1(p, target)) < 0.1
