"""Rollouts: padding, evaluation, backward rollouts, exploration, batch-split invariance, exact DP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import metrics
from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.envs.sequence import Sequence
from gfnem_jax.envs.sets import SetGeneration
from gfnem_jax.nets import MLPPolicy
from gfnem_jax.sampling import (Exploration, backward_rollout, behaviour_log_probs, evaluate,
                                forward_rollout)

from _exact_policy import exact_hypergrid_policy


def _policy(env, key=0, uniform_pb=False):
    m = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=32, n_layers=2, uniform_pb=uniform_pb)
    p = m.init(jax.random.PRNGKey(key), env.observe(env.init()))
    return m, p


def test_forward_rollout_structure_and_padding():
    env = HyperGrid(2, 4)
    apply_fn, p = _policy(env)
    tr = forward_rollout(env, apply_fn, p, jax.random.PRNGKey(1), 64, env.log_reward)
    B, T = tr.actions.shape
    assert T == env.max_steps
    L = np.asarray(tr.lengths)
    mask = np.asarray(tr.mask)
    assert np.array_equal(mask, np.arange(T)[None] < L[:, None])
    for arr in (tr.log_pf, tr.log_pb, tr.log_pi):
        assert np.all(np.asarray(arr)[~mask] == 0.0)
    assert np.all(np.asarray(tr.terminal.done))
    # terminal reached exactly at step L and repeated afterwards
    pos = np.asarray(tr.states.pos)
    for b in range(B):
        assert np.all(pos[b, L[b]:] == pos[b, -1])
        assert pos[b, L[b] - 1].sum() == L[b] - 1  # one increment per non-stop step
    # rollout values equal the batched differentiable evaluation
    ev = evaluate(env, apply_fn, p, tr)
    np.testing.assert_allclose(ev.log_pf, tr.log_pf, atol=1e-5)
    np.testing.assert_allclose(ev.log_pb, tr.log_pb, atol=1e-5)
    np.testing.assert_allclose(ev.log_flow, tr.log_flow, atol=1e-5)
    np.testing.assert_allclose(tr.log_pi, tr.log_pf, atol=1e-6)  # on-policy


def test_samples_do_not_depend_on_batch_split():
    env = HyperGrid(2, 4)
    apply_fn, p = _policy(env)
    key = jax.random.PRNGKey(3)
    full = forward_rollout(env, apply_fn, p, key, 8, env.log_reward)
    a = forward_rollout(env, apply_fn, p, key, 4, env.log_reward, index_offset=0)
    b = forward_rollout(env, apply_fn, p, key, 4, env.log_reward, index_offset=4)
    np.testing.assert_array_equal(full.actions, np.concatenate([a.actions, b.actions]))


def test_backward_rollout_reverses_to_valid_forward_trajectories():
    env = HyperGrid(3, 4)
    apply_fn, p = _policy(env)
    fw = forward_rollout(env, apply_fn, p, jax.random.PRNGKey(1), 32, env.log_reward)
    bw = backward_rollout(env, apply_fn, p, jax.random.PRNGKey(2), fw.terminal, env.log_reward)
    np.testing.assert_array_equal(bw.lengths, fw.lengths)  # HyperGrid: length = |x|_1 + 1
    np.testing.assert_array_equal(bw.log_reward, fw.log_reward)
    L = np.asarray(bw.lengths)
    for b in range(32):
        s = jax.tree.map(lambda a: a[b, 0], bw.states)
        assert bool(env.is_initial(s))
        for t in range(L[b]):
            s = env.step(s, bw.actions[b, t])
            nxt = jax.tree.map(lambda a: a[b, t + 1], bw.states)
            assert np.array_equal(s.pos, nxt.pos) and bool(s.done) == bool(nxt.done)
            assert int(env.backward_action(jax.tree.map(lambda a: a[b, t], bw.states), bw.actions[b, t])) == int(bw.bwd_actions[b, t])
    ev = evaluate(env, apply_fn, p, bw)
    np.testing.assert_allclose(ev.log_pb, bw.log_pb, atol=1e-5)
    np.testing.assert_allclose(ev.log_pf, bw.log_pf, atol=1e-5)


def test_backward_rollout_full_length_sequence():
    env = Sequence(3, 3)
    apply_fn, p = _policy(env)
    fw = forward_rollout(env, apply_fn, p, jax.random.PRNGKey(0), 16, lambda *_: 0.0)
    bw = backward_rollout(env, apply_fn, p, jax.random.PRNGKey(1), fw.terminal)
    np.testing.assert_array_equal(bw.actions, fw.actions)  # a tree: one trajectory per x
    np.testing.assert_array_equal(bw.states.tokens, fw.states.tokens)


def test_exploration_log_probs():
    logits = jnp.array([2.0, 0.0, -1.0, 5.0])
    mask = jnp.array([True, True, True, False])
    lp = behaviour_log_probs(logits, mask, Exploration(1.0, 1.0))
    np.testing.assert_allclose(jnp.exp(lp[:3]), 1 / 3, rtol=1e-6)
    lp = behaviour_log_probs(logits, mask, Exploration(2.0, 0.25))
    pt = jax.nn.softmax(logits[:3] / 2.0)
    np.testing.assert_allclose(jnp.exp(lp[:3]), 0.75 * pt + 0.25 / 3, rtol=1e-5)
    assert float(jnp.exp(lp[3])) == 0.0


@pytest.mark.parametrize("env", [HyperGrid(2, 3), SetGeneration(5, 3)])
def test_masked_actions_never_sampled_and_no_nan(env):
    """Every action taken is legal in the state it was taken in (checked against that state's own
    mask), even under heavy exploration; behaviour log-probs are finite."""
    apply_fn, p = _policy(env)
    tr = forward_rollout(env, apply_fn, p, jax.random.PRNGKey(5), 512, env.log_reward,
                         explore=Exploration(3.0, 0.3))
    before = jax.tree.map(lambda a: a[:, :-1], tr.states)
    fmask = jax.vmap(jax.vmap(env.forward_mask))(before)
    legal = np.take_along_axis(np.asarray(fmask), np.asarray(tr.actions)[..., None], -1)[..., 0]
    assert legal[np.asarray(tr.mask)].all()
    # and every backward action recorded is legal in the state it undoes
    after = jax.tree.map(lambda a: a[:, 1:], tr.states)
    bmask = jax.vmap(jax.vmap(env.backward_mask))(after)
    blegal = np.take_along_axis(np.asarray(bmask), np.asarray(tr.bwd_actions)[..., None], -1)[..., 0]
    assert blegal[np.asarray(tr.mask)].all()
    assert np.all(np.isfinite(np.asarray(tr.log_pi)))
    assert np.asarray(tr.mask).sum() > 0


def test_exact_dp_matches_empirical_distribution_of_1e5_samples():
    env = HyperGrid(2, 5, r0=0.1)
    apply_fn, p = _policy(env, key=7)
    table = metrics.transition_table(env)
    exact = np.asarray(metrics.terminal_distribution(env, apply_fn, p, table))
    draw = jax.jit(lambda k: forward_rollout(env, apply_fn, p, k, 25_000, env.log_reward).terminal)
    terms = [draw(jax.random.PRNGKey(i)) for i in range(4)]
    emp = sum(metrics.empirical_distribution(env, t, env.num_states()) for t in terms) / 4
    n = 100_000
    # per-state binomial standard errors: every state within 5 sigma, and the L1 near its floor
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(emp - exact) <= 5 * se + 1e-12)
    assert np.abs(emp - exact).sum() < 0.03
    # the check can fail: the exact target of the reward is a different distribution
    target = np.asarray(metrics.target_distribution(env, env.log_reward, None, table))
    assert np.abs(emp - target).sum() > 0.1


def test_exact_policy_samples_the_reward():
    env = HyperGrid(2, 4, r0=0.01)
    apply_fn, log_z, table, F = exact_hypergrid_policy(env)
    p = metrics.terminal_distribution(env, apply_fn, None, table)
    q = metrics.target_distribution(env, env.log_reward, None, table)
    assert float(metrics.l1(p, q)) < 1e-5
    rewards = jnp.exp(jax.vmap(lambda s: env.log_reward(None, None, s))(table.states))
    assert float(jnp.exp(log_z)) == pytest.approx(float(jnp.sum(jnp.where(table.terminal, rewards, 0))), rel=1e-5)


def test_packed_evaluation_equals_full_pass_values_and_gradients():
    env = HyperGrid(2, 6)
    apply_fn, p = _policy(env)
    tr = forward_rollout(env, apply_fn, p, jax.random.PRNGKey(4), 32, env.log_reward)
    full = evaluate(env, apply_fn, p, tr)
    for buckets in [(0.25, 0.5, 0.75, 1.0), (0.1, 1.0), (1.0,)]:
        packed = jax.jit(lambda q: evaluate(env, apply_fn, q, tr, buckets))(p)
        for a, b in zip(full, packed):
            np.testing.assert_allclose(a, b, atol=1e-6)
    f = lambda q, bk: jnp.sum(evaluate(env, apply_fn, q, tr, bk).log_pf) + jnp.sum(evaluate(env, apply_fn, q, tr, bk).log_flow)
    g1, g2 = jax.grad(f)(p, None), jax.grad(f)(p, (0.25, 0.5, 1.0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # reduction order only
