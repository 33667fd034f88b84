"""The RL view, checked exactly (issue 31): entropy-regularised RL on the state DAG as GFlowNet
training.

Q-values are the forward logits, P_F = softmax(Q), V(s) = log sum_a exp Q(s, a), the reward of a
transition s -> s' is log P_B(s | s') (``rl_correction`` pb) or 0 (none), plus log R(x) at the
last one. Checked here on small enumerable environments:

* the fixed point by dynamic programming (``metrics.soft_rl_fixed_point``): with the correction
  the sampler is R/Z on any DAG; without it, n_paths(x) R(x) / Z' (the closed form), which is R/Z
  on a tree (sequences) and on fixed-size sets (every set has k! orderings), and measurably not
  on the HyperGrid;
* every RL objective is exactly zero at the closed-form Q of its own correction (on
  trajectories drawn off-policy), and not at the other one;
* the target network is the Polyak copy kept in the optimizer state, updated as stated;
* short training runs through the one loop reach the fixed point of their correction (exact L1).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import cli, losses, loop, metrics, objectives
from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.envs.sequence_design import SequenceDesign
from gfnem_jax.envs.sets import SetGeneration
from gfnem_jax.experiments.runner import init_state, make_step
from gfnem_jax.gflownet import GFlowNet, sampler_update
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput
from gfnem_jax.optim import OptimConfig, make_optimizer
from gfnem_jax.sampling import Exploration

ENVS = {"sequences": SequenceDesign(length=3, vocab=3, seed=0),   # a tree
        "sets": SetGeneration(5, 3, seed=1),                      # a DAG, k! paths to each set
        "hypergrid": HyperGrid(ndim=2, height=4, r0=0.1)}        # a DAG, binomial path counts


def _closed_form(env, correction):
    """(table, V, Q, p_fixed, target R/Z, n_paths R / Z') by dynamic programming."""
    table = metrics.transition_table(env)
    lr = jax.vmap(lambda s: env.log_reward(None, None, s))(table.states)
    log_pb = None
    if correction == "pb":   # uniform P_B, as the MLP's ``uniform_pb`` and Tiapkin et al.
        pb = metrics.backward_probs_table(env, table, metrics.uniform_backward_probs(env, table))
        log_pb = jnp.log(jnp.where(table.fmask, pb, 1.0))
    V, Q = metrics.soft_rl_fixed_point(env, table, lr, log_pb)
    p = metrics.logits_terminal_distribution(env, table, Q)
    target = metrics.target_distribution(env, env.log_reward, None, table)
    n = metrics.trajectory_counts(env, table)
    biased = jnp.where(table.terminal, n * jnp.exp(jnp.where(table.terminal, lr, 0.0)), 0.0)
    return table, V, Q, p, target, biased / biased.sum()


@pytest.mark.parametrize("name", sorted(ENVS))
def test_fixed_point_by_dynamic_programming(name):
    """With the correction the soft-RL fixed point is R/Z (and V = log F of ``exact_flows``);
    without it, n_paths(x) R(x) / Z': equal to R/Z on the tree and on fixed-size sets, L1 > 0.1
    from it on the HyperGrid (the bias toward states reached by many paths)."""
    env = ENVS[name]
    table, V, _, p, target, biased = _closed_form(env, "pb")
    assert float(metrics.l1(p, target)) < 1e-5
    rewards = jnp.exp(jax.vmap(lambda s: env.log_reward(None, None, s))(table.states))
    pb = metrics.backward_probs_table(env, table, metrics.uniform_backward_probs(env, table))
    F, _ = metrics.exact_flows(env, table, rewards, pb)
    np.testing.assert_allclose(np.exp(V), F, rtol=1e-4)
    _, _, _, p_none, _, _ = _closed_form(env, "none")
    assert float(metrics.l1(p_none, biased)) < 1e-5          # the closed form, matched
    bias = float(metrics.l1(p_none, target))
    if name == "hypergrid":
        assert bias > 0.1, bias
    else:
        assert bias < 1e-5, bias


def _indexed(env):
    """The same environment observed as its state index (for a tabular policy)."""
    cls = type("Indexed" + type(env).__name__, (type(env),),
               {"observe": lambda self, s: self.state_index(s)})
    return cls(**{f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.init})


def _tabular(env):
    """A policy whose forward logits are a table [S, A] (its parameters), uniform P_B."""
    def apply_fn(q, idx, ctx):
        return PolicyOutput(q[idx], jnp.zeros((env.n_bwd_actions,)), jnp.zeros(()))
    return FunctionalPolicy(lambda k, o, c: None, apply_fn, lambda q, c: jnp.zeros(()))


LOSSES = [objectives.soft_q, objectives.munchausen, objectives.pcl]


@pytest.mark.parametrize("name", ["sets", "hypergrid"])
def test_losses_vanish_exactly_at_the_closed_form_q(name):
    """Every RL objective, each correction, is zero (to float32 rounding) on off-policy
    trajectories when the logits are the closed-form Q of its correction (Munchausen's
    logits: Q(s, a) - alpha V(s), see ``objectives.Munchausen``), also given a target network
    equal to it; and away from zero at the closed-form Q of the other correction on the
    HyperGrid (where the two differ)."""
    env = _indexed(ENVS[name])
    pol = _tabular(env)
    sols = {c: _closed_form(env, c) for c in objectives.RL_CORRECTIONS}
    alpha = objectives.munchausen().munchausen_alpha
    explore = Exploration(1.5, 0.2)
    trajs = {c: GFlowNet(env, pol).sample(sols[c][2], jax.random.PRNGKey(0), 64, env.log_reward,
                                          explore=explore) for c in sols}
    for corr in objectives.RL_CORRECTIONS:
        for make in LOSSES:
            obj = make(rl_correction=corr)
            gfn = GFlowNet(env, pol, obj, explore)
            for q_of in objectives.RL_CORRECTIONS:
                _, V, Q, *_ = sols[q_of]
                logits = Q - alpha * V[:, None] if obj.name == "munchausen" else Q
                traj = trajs[q_of]
                val = float(gfn.traj_loss(logits, traj))
                if q_of == corr:
                    assert val < 1e-7, (obj, q_of, val)
                    if obj.needs_target:
                        terms = gfn.terms(logits, traj)._replace(target=gfn.evaluate(logits, traj))
                        assert float(gfn.value(terms, traj)) < 1e-7
                elif name == "hypergrid":
                    assert val > 1e-3, (obj, q_of, val)


def test_soft_q_and_pcl_are_db_and_subtb_on_the_soft_values():
    """The RL view is the flow view with F = exp V: with the correction and no lag, soft_q's
    value is detailed balance and pcl's is SubTB (without log Z) on the flows V(s) = logsumexp of
    the forward logits, F(x) = R(x), on any batch (off-policy, learned P_B)."""
    env = ENVS["sets"]
    pol = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=16)
    gfn = GFlowNet(env, pol, objectives.soft_q(tau=1.0))
    params = gfn.init(jax.random.PRNGKey(0))
    traj = gfn.sample(params, jax.random.PRNGKey(1), 16, env.log_reward,
                      explore=Exploration(1.5, 0.1))
    ev = gfn.evaluate(params, traj)
    flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths)
    db = losses.detailed_balance(ev.log_pf, ev.log_pb, flows, traj.mask)
    subtb = losses.subtrajectory_balance(ev.log_pf, ev.log_pb, flows, traj.mask, 0.7)
    assert float(gfn.traj_loss(params, traj)) == pytest.approx(float(db), rel=1e-5)
    pcl = GFlowNet(env, pol, objectives.pcl(lam=0.7))
    assert float(pcl.traj_loss(params, traj)) == pytest.approx(float(subtb), rel=1e-5)


def test_target_network_is_the_polyak_copy_in_the_optimizer_state():
    """``loop.with_target``: target_0 = params_0, target_{k+1} = (1 - tau) target_k + tau
    params_{k+1}; the update is the wrapped optimizer's unchanged; sampler_update refuses an
    optimizer without the copy (naming tau)."""
    env = ENVS["sets"]
    gfn = GFlowNet(env, MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=8),
                   objectives.soft_q(tau=0.3))
    state, tx = init_state(gfn, OptimConfig(lr=1e-2), 0)
    assert isinstance(tx, loop.Carrying) and tx.rate == 0.3 and tx.memory is None
    chunk = loop.make_chunk(make_step(gfn, tx, 8), 1)
    want = state.sampler
    for _ in range(3):
        state, m = chunk(state)
        want = jax.tree.map(lambda p, t: 0.3 * p + 0.7 * t, state.sampler, want)
        assert np.isfinite(np.asarray(m["loss"])).all()
    for a, b in zip(jax.tree.leaves(state.sampler_opt.target), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="tau 0.3"):
        sampler_update(gfn, make_optimizer(OptimConfig(), gfn.policy.log_z_mask(state.sampler)),
                       8, env.log_reward)


def test_replay_buffer_is_a_ring_carried_by_the_optimizer():
    """``replay`` N: the optimizer state carries the buffer; after k steps of batch B it holds
    min(kB, N) trajectories and writes next at kB mod N; the rows written are real trajectories
    (terminal, with their log R); losses needing current-policy samples refuse it by name."""
    env = ENVS["sets"]
    gfn = GFlowNet(env, MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=8),
                   objectives.soft_q(tau=0.5))
    state, tx = init_state(gfn, OptimConfig(lr=1e-2), 0, replay=20)
    assert isinstance(tx, loop.Carrying) and tx.rate == 0.5 and tx.memory is not None
    chunk = loop.make_chunk(make_step(gfn, tx, 8, replay=20), 3)
    state, m = chunk(state)
    mem = state.sampler_opt.memory
    assert int(mem.count) == 20 and int(mem.pos) == 4 and m["visited"].shape == (3, 16)
    assert bool(jnp.all(jax.vmap(env.is_terminal)(mem.trajs.terminal)))
    lr = jax.vmap(lambda s: env.log_reward(None, None, s))(mem.trajs.terminal)
    np.testing.assert_allclose(lr, mem.trajs.log_reward, rtol=1e-6)
    tb = GFlowNet(env, gfn.policy, objectives.renyi())
    with pytest.raises(ValueError, match="replay 20 is not allowed here: loss renyi"):
        sampler_update(tb, tx, 8, env.log_reward, replay=20)
    with pytest.raises(ValueError, match="replay 4 is not allowed here: .*batch_size 8"):
        sampler_update(gfn, tx, 8, env.log_reward, replay=4)


def test_settings_are_checked_by_name():
    pol = MLPPolicy(3, 1, hidden=4)
    env = ENVS["sequences"]
    with pytest.raises(ValueError, match="rl_correction 'log' .*allowed: pb, none"):
        objectives.get("soft_q", rl_correction="log")
    with pytest.raises(ValueError, match="tau 0.0"):
        objectives.soft_q(tau=0.0)
    with pytest.raises(ValueError, match="munchausen_alpha 1.0"):
        objectives.munchausen(munchausen_alpha=1.0)
    with pytest.raises(ValueError, match="one_pass"):
        GFlowNet(env, pol, objectives.pcl(), one_pass=True)
    assert objectives.soft_q(tau=1.0).needs_target is False and objectives.pcl().balance


def _train(env, obj, steps, lr=3e-3, batch=32, hidden=64, epsilon=0.0, seed=0, replay=0):
    """Exact terminal distribution after ``steps`` of the one loop (uniform P_B)."""
    gfn = GFlowNet(env, MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=hidden,
                                  uniform_pb=True), obj, Exploration(1.0, epsilon))
    state, tx = init_state(gfn, OptimConfig(lr=lr), seed, replay)
    step = make_step(gfn, tx, batch, state_index=False, replay=replay)
    state, _ = loop.make_chunk(step, steps)(state)
    table = metrics.transition_table(env)
    return metrics.terminal_distribution(env, gfn.policy, state.sampler, table)


@pytest.mark.parametrize("name,obj,bound,replay", [
    ("sequences", objectives.soft_q(rl_correction="none", tau=0.1), 0.05, 0),
    ("hypergrid", objectives.soft_q(rl_correction="none", tau=0.1), 0.05, 0),
    ("hypergrid", objectives.soft_q(rl_correction="pb", tau=0.1), 0.05, 0),
    ("hypergrid", objectives.munchausen(rl_correction="pb", tau=0.1), 0.05, 128),
    ("hypergrid", objectives.pcl(rl_correction="pb"), 0.05, 0),
], ids=lambda x: getattr(x, "name", None) and f"{x.name}-{x.rl_correction}")
def test_training_reaches_the_fixed_point_of_its_correction(name, obj, bound, replay):
    """Through the one loop (runner's step, the target kept by the optimizer; Munchausen with a
    replay buffer of 128), 400 steps: the exact L1 to the closed-form fixed point of the
    objective's correction is below ``bound``; on the HyperGrid the uncorrected run stays > 0.5
    away from R/Z."""
    env = ENVS[name]
    _, _, _, fixed, target, _ = _closed_form(env, obj.rl_correction)
    p = _train(env, obj, 400, replay=replay)
    print(name, obj, "L1 to its fixed point", float(metrics.l1(p, fixed)), "to R/Z",
          float(metrics.l1(p, target)))
    assert float(metrics.l1(p, fixed)) < bound, float(metrics.l1(p, fixed))
    if name == "hypergrid" and obj.rl_correction == "none":
        assert float(metrics.l1(p, target)) > 0.5


@pytest.mark.parametrize("loss,extra", [("soft_q", ["--tau", "0.5"]),
                                        ("munchausen", ["--rl-correction", "none"]),
                                        ("pcl", ["--lam", "0.5"])])
def test_cli_trains_the_rl_objectives(tmp_path, capsys, loss, extra):
    run = tmp_path / "r"
    cli.main(["train", "sets", "--set-size", "5", "--k", "2", "--loss", loss, "--epsilon", "0.1",
              "--steps", "2", "--log-every", "1", "--batch-size", "4", "--hidden", "8", "--quiet",
              "--out", str(run)] + extra)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and np.isfinite(rows[-1]["loss"])
    cfg = json.load(open(run / "config.json"))
    assert cfg["loss"] == loss and cfg["rl_correction"] in ("pb", "none") and "tau" in cfg
