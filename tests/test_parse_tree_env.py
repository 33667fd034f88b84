"""ParseTree environment: dynamics, masks, enumeration counts, tree conversion, rewards."""
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from gfnem_jax import metrics
from gfnem_jax.grammar.env import ParseTree, make_cond
from gfnem_jax.grammar import rules as gm

L, NT = 6, 3
ENV = ParseTree(L, NT)


def catalan(k):
    return comb(2 * k, k) // (k + 1)


def same(a, b):
    return all(bool(jnp.all(x == y)) for x, y in zip(a, b))


@jax.jit
def _walk(key, n):
    """A random complete trajectory for a sentence of n words; per step the checks' inputs."""
    s = ENV.init({"tokens": jnp.zeros((L,), jnp.int32), "length": n})

    def body(s, t):
        fmask = ENV.forward_mask(s)
        a = jax.random.categorical(jax.random.fold_in(key, t), jnp.where(fmask, 0.0, -jnp.inf))
        a = jnp.where(fmask.any(), a, 0).astype(jnp.int32)
        nxt = ENV.step(s, a)
        b = ENV.backward_action(s, a)
        back = ENV.backward_step(nxt, b)
        undone = jnp.all(jnp.stack([jnp.all(x == y) for x, y in zip(back, s)]))
        checks = jnp.stack([undone, ENV.forward_action(nxt, b) == a, ENV.backward_mask(nxt)[b],
                            fmask[a]])
        return nxt, (checks, fmask.any(), ENV.is_terminal(nxt))
    return jax.lax.scan(body, s, jnp.arange(L - 1))


@given(st.integers(1, L), st.integers(0, 2 ** 30))
def test_forward_step_undone_by_backward_step(n, seed):
    final, (checks, moved, term) = _walk(jax.random.PRNGKey(seed), jnp.asarray(n, jnp.int32))
    moved = np.asarray(moved)
    # every complete trajectory has exactly n - 1 steps, and is terminal only at the end
    assert moved.sum() == max(n - 1, 0) and moved[: max(n - 1, 0)].all()
    assert np.asarray(checks)[moved].all()
    assert bool(ENV.is_terminal(final)) and int(final.r) == min(n, 1)
    assert not np.asarray(term)[: max(n - 2, 0)].any()


@pytest.mark.parametrize("n_nt", [1, 2, 3])
def test_terminal_count_is_catalan_times_labelings(n_nt):
    env = ParseTree(5, n_nt)
    for n in range(1, 6):
        states = env.all_states(make_cond(range(n), 5))
        n_term = int(np.sum(np.asarray(states.r) <= 1))
        assert n_term == catalan(n - 1) * n_nt ** (n - 1)


def test_state_index_is_a_bijection_and_dag_is_consistent():
    c = make_cond([0, 1, 2, 3], L)
    table = metrics.transition_table(ENV, c)
    S = ENV.num_states(c)
    idx = jax.vmap(lambda s: ENV.state_index(s, c))(table.states)
    assert np.array_equal(np.asarray(idx), np.arange(S))
    # a uniform forward policy puts probability 1 on the terminal states
    probs = table.fmask / jnp.maximum(table.fmask.sum(1, keepdims=True), 1)
    P = metrics._propagate(ENV, table, probs)
    assert np.isclose(float(jnp.sum(jnp.where(table.terminal, P, 0.0))), 1.0, atol=1e-5)
    # each labelled tree is reached by as many trajectories as its bracketing has linear extensions
    counts = np.asarray(metrics.trajectory_counts(ENV, table))[np.asarray(table.terminal)]
    # n = 4: bracketings ((ab)(cd)) has 2 orders, the 4 others 1 each; labels multiply by NT^3
    assert sorted(set(np.round(counts).astype(int))) == [1, 2]
    assert np.isclose(counts.sum(), (4 + 2) * NT ** 3)


def test_every_backward_action_is_undone_by_its_forward_action():
    c = make_cond([0, 1, 2, 3, 4], L)
    states = ENV.all_states(c)
    bs = jnp.arange(ENV.n_bwd_actions)

    def check(s):
        bm = ENV.backward_mask(s)
        def one(b):
            prev = ENV.backward_step(s, b)
            a = ENV.forward_action(s, b)
            ok = jnp.all(jnp.stack([jnp.all(x == y) for x, y in zip(ENV.step(prev, a), s)]))
            return ok & ENV.forward_mask(prev)[a] & (ENV.backward_action(prev, a) == b)
        return jnp.where(bm, jax.vmap(one)(bs), True).all(), bm.any() == ~ENV.is_initial(s)
    ok, init_ok = jax.jit(jax.vmap(check))(states)
    assert np.asarray(ok).all() and np.asarray(init_ok).all()


def test_illegal_actions_leave_the_state_unchanged():
    s = ENV.init(make_cond([0, 1, 2], L))
    for a in [2 * NT, (L - 2) * NT + 1, -1, ENV.n_actions]:  # p >= r - 1, or out of range
        assert same(ENV.step(s, a), s)
    assert same(ENV.backward_step(s, 0), s)  # words cannot be split
    assert not bool(ENV.forward_mask(ENV.init(make_cond([3], L))).any())


def test_tree_conversion_and_rewards_against_inside(float64):
    from gfnem_jax.grammar import inside
    words = [1, 4, 0, 2]
    c = make_cond(words, L)
    states = ENV.all_states(c)
    term = jax.tree.map(lambda a: a[np.asarray(states.r) <= 1], states)
    back = jax.jit(jax.vmap(lambda s: ENV.from_tree(ENV.tree(s))))(term)
    assert same(back, term)
    for ncfg in (False, True):
        g = gm.random_grammar(jax.random.PRNGKey(int(ncfg)), NT, 2, 5, ncfg=ncfg)
        lr, direct, part = jax.jit(jax.vmap(lambda s: (
            ENV.log_reward(g, c, s), gm.log_joint(g, c["tokens"], ENV.tree(s)),
            ENV.partial_log_reward(g, c, s))))(term)
        np.testing.assert_allclose(lr, direct, atol=1e-9)
        np.testing.assert_allclose(part, lr, atol=1e-9)
        assert float(ENV.partial_log_reward(g, c, ENV.init(c))) == 0.0
        if not ncfg:  # the labelled trees are all the latents: their total is the inside value
            lp = inside.log_marginal(g, c["tokens"][None], c["length"][None])[0]
            np.testing.assert_allclose(jax.nn.logsumexp(lr), lp, atol=1e-6)


def test_partial_log_reward_grows_by_the_rule_of_each_merge(float64):
    """PCFG: g(step(s, a)) - g(s) is the merged node's rule score, computed independently."""
    g = gm.random_grammar(jax.random.PRNGKey(3), NT, 2, 5)
    c = make_cond([1, 2, 3, 4], L)
    s = ENV.init(c)
    s1 = ENV.step(s, 1 * NT + 2)  # merge words 1, 2 under label 2
    w = c["tokens"]
    e = g["emit"]  # [PT, V]
    ll = jax.nn.logsumexp(g["binary"][2, NT:, NT:] + e[:, w[1]][:, None] + e[:, w[2]][None, :])
    np.testing.assert_allclose(ENV.partial_log_reward(g, c, s1), ll, atol=1e-9)
    s2 = ENV.step(s1, 0 * NT + 1)  # word 0 with [1, 2] under label 1
    ln = jax.nn.logsumexp(g["binary"][1, NT:, 2] + e[:, w[0]])
    np.testing.assert_allclose(ENV.partial_log_reward(g, c, s2), ll + ln, atol=1e-9)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="max_len"):
        ParseTree(1, 2)
    with pytest.raises(ValueError, match="too large"):
        ParseTree(20, 30).num_states(make_cond([0, 1], 20))
