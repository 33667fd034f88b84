"""Exact checks of the MCMC samplers on tiny binary spaces (d = 3, every path enumerated).

back-and-forth MH: the transition matrix built from the formula by enumerating every backward
path and forward completion satisfies detailed balance w.r.t. R (and a ratio without the P_B / P_F
terms does not, so the check has power); the implementation's empirical transition frequencies
match that matrix, and those of its multi-round chain (traced k) match the matrix's power. Gibbs
and Gibbs-with-gradients: same, with their exact matrices, for one step and for the n-step chains
PCD and GWG use (sharded by index_offset: bitwise the whole batch).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import mcmc
from gfnem_jax.envs.base import masked_log_softmax
from gfnem_jax.envs.bits import Bits, BitsState
from gfnem_jax.models.energy import EnergyModel, all_energies
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput

D = 3


def _tabular_policy(env, key, scale=1.5):
    """A fixed random policy: free logits per state (P_F and a non-uniform, learned-style P_B)."""
    S = env.num_states()
    kf, kb = jax.random.split(key)
    params = {"f": scale * jax.random.normal(kf, (S, env.n_actions)),
              "b": scale * jax.random.normal(kb, (S, env.n_bwd_actions))}
    mult = 3 ** jnp.arange(env.d - 1, -1, -1)

    def apply(p, obs, ctx):
        idx = jnp.sum(jnp.argmax(obs.reshape(env.d, 3), -1) * mult)
        return PolicyOutput(p["f"][idx], p["b"][idx], jnp.zeros(()))

    pol = FunctionalPolicy(lambda k, o, c: params, apply, lambda p, c: jnp.zeros(()))
    return pol, params


def _tables(env, params):
    st = env.all_states()
    f = np.asarray(jnp.exp(masked_log_softmax(params["f"], jax.vmap(env.forward_mask)(st))), np.float64)
    b = np.asarray(jnp.exp(masked_log_softmax(params["b"], jax.vmap(env.backward_mask)(st))), np.float64)
    f = f * np.asarray(jax.vmap(env.forward_mask)(st))
    b = b * np.asarray(jax.vmap(env.backward_mask)(st))
    norm = lambda m: m / np.maximum(m.sum(1, keepdims=True), 1e-300)  # float64 rows summing to 1
    return norm(f), norm(b)


def _sidx(bits):
    return int(sum((v + 1) * 3 ** (len(bits) - 1 - i) for i, v in enumerate(bits)))


def _tidx(bits):
    return int(sum(v * 2 ** (len(bits) - 1 - i) for i, v in enumerate(bits)))


def _exact_bnf_matrix(d, k, pf, pb, log_r, use_pb_pf=True):
    """T[x, x'] of the back-and-forth MH chain, by enumeration (float64)."""
    n = 2 ** d
    T = np.zeros((n, n))
    for xi in range(n):
        x = [(xi >> (d - 1 - i)) & 1 for i in range(d)]
        for order in itertools.permutations(range(d), k):  # positions unset, in order
            s, p_b, p_f_rev = list(x), 1.0, 1.0
            for i in order:
                child = _sidx(s)
                p_b *= pb[child, i]
                v = s[i]
                s[i] = -1
                p_f_rev *= pf[_sidx(s), 2 * i + v]
            free = [i for i in range(d) if s[i] < 0]
            for forder in itertools.permutations(free):
                for vals in itertools.product((0, 1), repeat=len(free)):
                    t, p_f, p_b_rev = list(s), 1.0, 1.0
                    for i, v in zip(forder, vals):
                        p_f *= pf[_sidx(t), 2 * i + v]
                        t[i] = v
                        p_b_rev *= pb[_sidx(t), i]
                    yi = _tidx(t)
                    if use_pb_pf:
                        log_a = (log_r[yi] + np.log(p_b_rev) + np.log(p_f_rev)) - (log_r[xi] + np.log(p_b) + np.log(p_f))
                    else:
                        log_a = log_r[yi] - log_r[xi]
                    a = min(1.0, np.exp(log_a))
                    T[xi, yi] += p_b * p_f * a
                    T[xi, xi] += p_b * p_f * (1 - a)
    return T


def _check_detailed_balance(T, pi, tol=1e-10):
    flux = pi[:, None] * T
    return np.max(np.abs(flux - flux.T)) < tol and np.max(np.abs(pi @ T - pi)) < tol


@pytest.mark.parametrize("k", [1, 2, 3])
def test_back_and_forth_exact_detailed_balance(k):
    env = Bits(D)
    pol, params = _tabular_policy(env, jax.random.PRNGKey(k))
    pf, pb = _tables(env, params)
    log_r = np.asarray(jax.random.normal(jax.random.PRNGKey(10 + k), (2 ** D,)), np.float64) * 1.5
    pi = np.exp(log_r - np.logaddexp.reduce(log_r))
    T = _exact_bnf_matrix(D, k, pf, pb, log_r)
    np.testing.assert_allclose(T.sum(1), 1.0, atol=1e-12)
    assert _check_detailed_balance(T, pi)
    # power: the ratio without the path terms breaks invariance for a non-uniform policy
    T_bad = _exact_bnf_matrix(D, k, pf, pb, log_r, use_pb_pf=False)
    assert not _check_detailed_balance(T_bad, pi, tol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_back_and_forth_implementation_matches_exact_matrix(k):
    env = Bits(D)
    pol, params = _tabular_policy(env, jax.random.PRNGKey(k))
    pf, pb = _tables(env, params)
    log_r = jax.random.normal(jax.random.PRNGKey(10 + k), (2 ** D,)) * 1.5
    T = _exact_bnf_matrix(D, k, pf, pb, np.asarray(log_r, np.float64))

    def log_reward_fn(lr, cond, s):
        return lr[env.terminal_index(s)]

    n_per = 3000
    start = jnp.repeat(jnp.arange(2 ** D), n_per)
    x0 = env.all_terminals().bits[start]
    step = jax.jit(lambda key, x: mcmc.back_and_forth(env, pol, params, key, BitsState(x), k,
                                                       log_reward_fn, log_r))
    xn, acc, log_acc = step(jax.random.PRNGKey(7), x0)
    end = np.asarray(jax.vmap(env.terminal_index)(xn))
    assert np.all(np.asarray(log_acc) <= 0)
    assert np.all(np.asarray(xn.bits) >= 0)
    counts = np.zeros((2 ** D, 2 ** D))
    np.add.at(counts, (np.asarray(start), end), 1)
    T_hat = counts / n_per
    sd = np.sqrt(T * (1 - T) / n_per)
    assert np.all(np.abs(T_hat - T) < 5 * sd + 2e-3), np.max(np.abs(T_hat - T))
    # power: a sampler that dropped the P_B / P_F terms would be far outside this tolerance
    T_bad = _exact_bnf_matrix(D, k, pf, pb, np.asarray(log_r, np.float64), use_pb_pf=False)
    assert np.max(np.abs(T_bad - T) / (5 * sd + 2e-3)) > 3


@pytest.mark.parametrize("k", [1, 2])
def test_back_and_forth_chain_traced_k_matches_exact_matrix_power(k):
    """back_and_forth_chain (2 rounds) with a traced k (and with k per chain) is bitwise the chain
    with a static k, and its end states from each start follow the exact T^2 (enumeration)."""
    env = Bits(D)
    pol, params = _tabular_policy(env, jax.random.PRNGKey(20 + k))
    pf, pb = _tables(env, params)
    log_r = jax.random.normal(jax.random.PRNGKey(30 + k), (2 ** D,)) * 1.5
    T2 = np.linalg.matrix_power(_exact_bnf_matrix(D, k, pf, pb, np.asarray(log_r, np.float64)), 2)

    def log_reward_fn(lr, cond, s):
        return lr[env.terminal_index(s)]

    n_per = 3000
    start = jnp.repeat(jnp.arange(2 ** D), n_per)
    x0 = BitsState(env.all_terminals().bits[start])
    chain = lambda kk: mcmc.back_and_forth_chain(env, pol, params, jax.random.PRNGKey(8), x0, kk,
                                                 2, log_reward_fn, log_r)
    x, acc = jax.jit(chain)(jnp.asarray(k))  # traced
    x_s, acc_s = jax.jit(lambda: chain(k))()  # static
    x_b, acc_b = jax.jit(chain)(jnp.full((start.shape[0],), k, jnp.int32))  # one per chain
    for other in (x_s, x_b):
        np.testing.assert_array_equal(np.asarray(x.bits), np.asarray(other.bits))
    np.testing.assert_array_equal(np.asarray(acc), np.asarray(acc_s))
    np.testing.assert_array_equal(np.asarray(acc), np.asarray(acc_b))
    end = np.asarray(jax.vmap(env.terminal_index)(x))
    counts = np.zeros((2 ** D, 2 ** D))
    np.add.at(counts, (np.asarray(start), end), 1)
    sd = np.sqrt(T2 * (1 - T2) / n_per)
    assert np.all(np.abs(counts / n_per - T2) < 5 * sd + 2e-3), np.max(np.abs(counts / n_per - T2))
    # power: the chain of a ratio without the P_B / P_F terms is far outside this tolerance
    T2_bad = np.linalg.matrix_power(
        _exact_bnf_matrix(D, k, pf, pb, np.asarray(log_r, np.float64), use_pb_pf=False), 2)
    assert np.max(np.abs(T2_bad - T2) / (5 * sd + 2e-3)) > 3


def _energy_setup(seed=0):
    model = EnergyModel(D, hidden=8, n_layers=2)
    params = model.init(jax.random.PRNGKey(seed))
    params = jax.tree.map(lambda a: 3.0 * a, params)  # a peaked target
    e = np.asarray(all_energies(model, params), np.float64)
    pi = np.exp(-e - np.logaddexp.reduce(-e))
    X = np.array([[(r >> (D - 1 - i)) & 1 for i in range(D)] for r in range(2 ** D)], np.float32)
    return model, params, e, pi, X


def _flip_index(r, i):
    return r ^ (1 << (D - 1 - i))


def _exact_gibbs_matrix(e):
    """T[x, x'] of one random-scan Gibbs step for energies e float64[2^d] (enumeration)."""
    T = np.zeros((2 ** D, 2 ** D))
    for r in range(2 ** D):
        for i in range(D):
            y = _flip_index(r, i)
            p_y = 1.0 / (1.0 + np.exp(e[y] - e[r]))  # p(x_i = y_i | rest)
            T[r, y] += p_y / D
            T[r, r] += (1 - p_y) / D
    return T


def _exact_gwg_matrix(model, params64, e, X):
    """(T[x, x'] of one Gibbs-with-gradients step, log q(i | x) [2^d, d]) by enumeration."""
    lq = np.asarray(jax.vmap(lambda x: mcmc.gwg_log_q(model.energy, params64, x))(jnp.asarray(X, jnp.float64)))
    T = np.zeros((2 ** D, 2 ** D))
    for r in range(2 ** D):
        for i in range(D):
            y = _flip_index(r, i)
            a = min(1.0, np.exp(e[r] - e[y] + lq[y, i] - lq[r, i]))
            T[r, y] += np.exp(lq[r, i]) * a
            T[r, r] += np.exp(lq[r, i]) * (1 - a)
    return T, lq


def _empirical(step_fn, X, n_per, key):
    start = np.repeat(np.arange(2 ** D), n_per)
    xn = np.asarray(step_fn(key, jnp.asarray(X[start])))
    end = (xn.astype(int) * (2 ** np.arange(D - 1, -1, -1))).sum(1)
    counts = np.zeros((2 ** D, 2 ** D))
    np.add.at(counts, (start, end), 1)
    return counts / n_per


def test_gibbs_exact_invariance_and_implementation():
    model, params, e, pi, X = _energy_setup()
    T = _exact_gibbs_matrix(e)
    assert _check_detailed_balance(T, pi)
    n_per = 4000
    T_hat = _empirical(jax.jit(lambda k, x: mcmc.gibbs_step(model.energy, params, k, x)), X, n_per,
                       jax.random.PRNGKey(3))
    assert np.all(np.abs(T_hat - T) < 5 * np.sqrt(T * (1 - T) / n_per) + 2e-3)
    # a systematic sweep also leaves pi invariant: check pi T_sweep = pi empirically
    T_sw = _empirical(jax.jit(lambda k, x: mcmc.gibbs_sweep(model.energy, params, k, x)), X, n_per,
                      jax.random.PRNGKey(4))
    assert np.max(np.abs(pi @ T_sw - pi)) < 0.02


def test_gwg_exact_invariance_and_implementation(float64):
    model, params, e, pi, X = _energy_setup(1)
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    T, lq = _exact_gwg_matrix(model, params64, e, X)
    assert _check_detailed_balance(T, pi, tol=1e-6)
    n_per = 4000
    T_hat = _empirical(jax.jit(lambda k, x: mcmc.gwg_step(model.energy, params64, k, x)[0]),
                       X.astype(np.float64), n_per, jax.random.PRNGKey(5))
    assert np.all(np.abs(T_hat - T) < 5 * np.sqrt(T * (1 - T) / n_per) + 2e-3)
    # gradient-informed proposal differs from uniform (the test would not see a uniform q)
    assert np.max(np.abs(np.exp(lq) - 1.0 / D)) > 0.05


def test_chains_under_scan_match_exact_matrix_powers(float64):
    """The PCD / GWG chains (n steps under lax.scan, per-chain keys by global index): a batch
    split in two (index_offset) moves bitwise as the whole, and the end states after n = 3
    steps from each start follow the exact T^3; GwG's acceptance rates average to the exact
    expected acceptance of those 3 steps."""
    model, params, e, pi, X = _energy_setup(2)
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    T_gibbs = _exact_gibbs_matrix(e)
    T_gwg, lq = _exact_gwg_matrix(model, params64, e, X)
    n, n_per = 3, 4000
    start = np.repeat(np.arange(2 ** D), n_per)
    x0 = jnp.asarray(X[start], jnp.float64)
    key = jax.random.PRNGKey(6)
    half = x0.shape[0] // 2
    gibbs = jax.jit(lambda x, off: mcmc.gibbs(model.energy, params64, key, x, n, index_offset=off))
    gwg = jax.jit(lambda x, off: mcmc.gwg_chains(model.energy, params64, key, x, n, off))
    xg = gibbs(x0, 0)
    xw, acc = gwg(x0, 0)
    # sharded: each half with its global offset is the whole, bitwise
    np.testing.assert_array_equal(np.concatenate([gibbs(x0[:half], 0), gibbs(x0[half:], half)]), xg)
    parts = [gwg(x0[:half], 0), gwg(x0[half:], half)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), xw)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), acc)
    code = lambda x: (np.asarray(x).astype(int) * (2 ** np.arange(D - 1, -1, -1))).sum(1)
    for x, T in ((xg, T_gibbs), (xw, T_gwg)):
        Tn = np.linalg.matrix_power(T, n)
        counts = np.zeros((2 ** D, 2 ** D))
        np.add.at(counts, (start, code(x)), 1)
        sd = np.sqrt(Tn * (1 - Tn) / n_per)
        assert np.all(np.abs(counts / n_per - Tn) < 5 * sd + 2e-3), np.max(np.abs(counts / n_per - Tn))
        assert np.max(np.abs(T - Tn) / (5 * sd + 2e-3)) > 3  # power: one step is not three
    # GwG acceptance: per start, E[accepted steps] / n = sum_t (mu_t @ a) / n, a(x) = P(accept | x)
    a = np.array([sum(np.exp(lq[r, i]) * min(1.0, np.exp(e[r] - e[_flip_index(r, i)]
                                                         + lq[_flip_index(r, i), i] - lq[r, i]))
                      for i in range(D)) for r in range(2 ** D)])
    exp_acc = sum(np.linalg.matrix_power(T_gwg, t) @ a for t in range(n)) / n
    mean_acc = np.bincount(start, weights=np.asarray(acc)) / n_per
    assert np.all(np.abs(mean_acc - exp_acc) < 5 * np.sqrt(0.25 / n_per) + 1e-3)
