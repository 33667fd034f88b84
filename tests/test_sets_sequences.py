"""Set generation and sequence design (DIV tasks): environment invariants, exact DP, rewards."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gfnem_jax import metrics
from gfnem_jax.envs.sequence import SeqState
from gfnem_jax.envs.sequence_design import SequenceDesign
from gfnem_jax.envs.sets import SetGeneration, SetState
from gfnem_jax.experiments import sequences as seq_task
from gfnem_jax.experiments import sets as sets_task
from gfnem_jax.nets.mlp import MLPPolicy

set_dims = st.tuples(st.integers(2, 7), st.integers(1, 7)).filter(lambda t: t[1] <= t[0])


def _random_set_state(env, data):
    n = data.draw(st.integers(0, env.k))
    chosen = data.draw(st.lists(st.integers(0, env.size - 1), min_size=n, max_size=n, unique=True))
    m = np.zeros(env.size, bool)
    m[chosen] = True
    return SetState(jnp.asarray(m), jnp.asarray(n, jnp.int32))


@settings(max_examples=15, deadline=None)
@given(set_dims, st.data())
def test_sets_backward_undoes_forward_and_masks_agree(dims, data):
    env = SetGeneration(*dims)
    s = _random_set_state(env, data)
    fmask = np.asarray(env.forward_mask(s))
    members = np.asarray(s.members)
    assert np.array_equal(fmask, ~members & (int(s.n) < env.k))
    assert bool(env.is_terminal(s)) == (not fmask.any())
    for a in range(env.n_actions):
        s2 = env.step(s, a)
        if not fmask[a]:  # an illegal action leaves a valid (the same) state
            assert np.array_equal(s2.members, members) and int(s2.n) == int(s.n)
            continue
        assert int(s2.n) == int(s.n) + 1 and int(np.sum(s2.members)) == int(s2.n)
        b = int(env.backward_action(s, a))
        assert bool(env.backward_mask(s2)[b])
        back = env.backward_step(s2, b)
        assert np.array_equal(back.members, members) and int(back.n) == int(s.n)
        assert int(env.forward_action(s2, b)) == a
    bmask = np.asarray(env.backward_mask(s))
    assert np.array_equal(bmask, members)
    assert bool(env.is_initial(s)) == (not bmask.any())
    for b in np.nonzero(bmask)[0]:
        parent = env.backward_step(s, int(b))
        a = int(env.forward_action(s, int(b)))
        assert bool(env.forward_mask(parent)[a])
        child = env.step(parent, a)
        assert np.array_equal(child.members, members)


@settings(max_examples=10, deadline=None)
@given(set_dims, st.lists(st.integers(0, 1000), min_size=8, max_size=8))
def test_sets_trajectories_end_within_max_steps(dims, picks):
    env = SetGeneration(*dims)
    s = env.init()
    for t in range(env.max_steps):
        legal = np.nonzero(np.asarray(env.forward_mask(s)))[0]
        assert len(legal) > 0
        s = env.step(s, int(legal[picks[t % len(picks)] % len(legal)]))
    assert bool(env.is_terminal(s)) and int(s.n) == env.k
    assert not np.asarray(env.forward_mask(s)).any()


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(2, 4), st.data())
def test_sequences_backward_undoes_forward(length, vocab, data):
    env = SequenceDesign(length, vocab)
    n = data.draw(st.integers(0, length - 1))
    toks = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    s = SeqState(jnp.asarray(toks + [-1] * (length - n), jnp.int32), jnp.asarray(n, jnp.int32))
    assert np.asarray(env.forward_mask(s)).all()
    for a in range(vocab):
        s2 = env.step(s, a)
        b = int(env.backward_action(s, a))
        assert bool(env.backward_mask(s2)[b])
        back = env.backward_step(s2, b)
        assert np.array_equal(back.tokens, s.tokens) and int(back.n) == n
        assert int(env.forward_action(s2, b)) == a


@pytest.mark.parametrize("env", [SetGeneration(6, 3), SetGeneration(5, 5), SetGeneration(12, 6),
                                 SequenceDesign(3, 3), SequenceDesign(6, 4)])
def test_state_index_is_a_bijection(env):
    S = env.num_states()
    idx = np.asarray(jax.vmap(env.state_index)(env.all_states()))
    assert np.array_equal(idx, np.arange(S))
    # children of every state land inside range(S)
    table = metrics.transition_table(env)
    ch = np.asarray(table.children)[np.asarray(table.fmask)]
    assert ch.min() >= 0 and ch.max() < S


@pytest.mark.parametrize("size,k", [(6, 3), (5, 5), (7, 2)])
def test_sets_dag_trajectory_counts(size, k):
    env = SetGeneration(size, k)
    table = metrics.transition_table(env)
    counts = np.asarray(metrics.trajectory_counts(env, table))
    term = np.asarray(table.terminal)
    assert term.sum() == math.comb(size, k)
    np.testing.assert_allclose(counts[term], math.factorial(k))
    n = np.asarray(table.states.n)
    np.testing.assert_allclose(counts, [math.factorial(int(j)) for j in n])


def test_sequences_dag_is_a_tree():
    env = SequenceDesign(3, 3)
    table = metrics.transition_table(env)
    counts = np.asarray(metrics.trajectory_counts(env, table))
    np.testing.assert_allclose(counts, 1.0)


@pytest.mark.parametrize("env", [SetGeneration(6, 3), SequenceDesign(3, 3)])
def test_exact_distribution_sums_to_one(env):
    module = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=16)
    params = module.init(jax.random.PRNGKey(0), env.observe(env.init()))
    table = metrics.transition_table(env)
    p = np.asarray(metrics.terminal_distribution(env, module, params, table))
    assert abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
    assert (p[~np.asarray(table.terminal)] == 0).all()
    tgt = np.asarray(metrics.target_distribution(env, env.log_reward, None, table))
    assert abs(tgt.sum() - 1) < 1e-5


def test_set_reward_formula_and_seed():
    env = SetGeneration(6, 3, seed=3, temperature=0.7)
    u, w = (np.asarray(a, np.float64) for a in env.weights())
    assert np.allclose(w, w.T) and np.allclose(np.diag(w), 0)
    m = np.array([1, 0, 1, 1, 0, 0], bool)
    s = SetState(jnp.asarray(m), jnp.asarray(3, jnp.int32))
    idx = np.nonzero(m)[0]
    want = (u[idx].sum() + sum(w[i, j] for i in idx for j in idx if i < j)) / 0.7
    assert abs(float(env.log_reward(None, None, s)) - want) < 1e-4
    assert hash(env) == hash(SetGeneration(6, 3, seed=3, temperature=0.7))
    assert SetGeneration(6, 3, seed=3) == SetGeneration(6, 3, seed=3)
    other = SetGeneration(6, 3, seed=4, temperature=0.7)
    assert float(other.log_reward(None, None, s)) != pytest.approx(want)


def test_sequence_reward_formula():
    env = SequenceDesign(4, 3, seed=1)
    a, b = (np.asarray(x, np.float64) for x in env.weights())
    toks = [2, 0, 1, 1]
    s = SeqState(jnp.asarray(toks, jnp.int32), jnp.asarray(4, jnp.int32))
    want = sum(a[p, t] for p, t in enumerate(toks)) + sum(b[toks[p], toks[p + 1]] for p in range(3))
    assert abs(float(env.log_reward(None, None, s)) - want) < 1e-4


def test_task_validation_and_modes():
    S, Q = sets_task.SetsSettings, seq_task.SequencesSettings
    with pytest.raises(ValueError, match="^k must be"):
        S(set_size=6, k=7).validate()
    with pytest.raises(ValueError, match="set_size 32 with k 16"):
        S(set_size=32, k=16).validate()
    with pytest.raises(ValueError, match="reward_temperature"):
        Q(length=3, vocab=3, reward_temperature=0.0).validate()
    with pytest.raises(ValueError, match="^vocab"):
        Q(length=3, vocab=1).validate()
    env = sets_task.build_env(S(set_size=6, k=3))
    modes = np.asarray(sets_task.mode_indices(env))
    table = metrics.transition_table(env)
    lr = np.asarray(jax.vmap(lambda s: env.log_reward(None, None, s))(table.states))
    term = np.asarray(table.terminal)
    assert term[modes].all() and len(modes) == sets_task.N_MODES
    assert lr[modes].min() >= np.sort(lr[term])[-sets_task.N_MODES] - 1e-6
    env = seq_task.build_env(Q(length=3, vocab=3))
    modes = np.asarray(seq_task.mode_indices(env))
    assert np.isin(modes, np.asarray(env.terminal_indices())).all()
