"""Tests of the GFlowNet-EM engine (gfnem_jax.em) on the hierarchical mixture, by enumeration."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _o2 import jit_o2

from gfnem_jax import em, loop, metrics, objectives
from gfnem_jax.envs.sequence import SeqState, Sequence
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.models.mixture import (GENERATING_MEANS, HierarchicalMixture, generate_data,
                                      latent_to_state)
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.sampling import Exploration
from gfnem_jax.optim import OptimConfig, policy_optimizer

MODEL = HierarchicalMixture()
ENV = Sequence(length=2, vocab=4)
THETA = jnp.asarray([[-1.2, -1.5], [1.0, 1.6], [0.2, -1.0], [-1.9, 1.1]], jnp.float32)


def _gfn(hidden=64, eps=0.0):
    module = MLPPolicy(4, 1, hidden=hidden, n_layers=2, uniform_pb=True, conditional=True)
    return GFlowNet(ENV, module, objectives.tb(), Exploration(1.0, eps))


X0 = jnp.zeros((2,), jnp.float32)  # an example condition for initialisation


def _data(n=200, seed=3):
    return jnp.asarray(generate_data(MODEL, seed, n)[0])


def test_m_step_gradient_with_perfect_posterior_is_marginal_gradient():
    """E_{z ~ p(z|x)} grad log p(x, z) = grad log p(x): enumeration, float tolerance."""
    x = _data(64)
    Z = MODEL.all_latents()
    zs = jnp.broadcast_to(Z[None], (x.shape[0],) + Z.shape)
    w = MODEL.exact_posterior(THETA, x)
    g_m = jax.grad(lambda th: em.expected_nll(MODEL.log_joint, th, x, zs, w))(THETA)
    g_ll = jax.grad(lambda th: -MODEL.loglik(th, x))(THETA)
    np.testing.assert_allclose(g_m, g_ll, rtol=1e-4, atol=1e-5)
    # sanity: the gradient is not trivially zero, and a wrong posterior gives a different one
    assert float(jnp.abs(g_ll).max()) > 0.1
    g_bad = jax.grad(lambda th: em.expected_nll(MODEL.log_joint, th, x, zs,
                                                jnp.full_like(w, 1 / 16)))(THETA)
    assert float(jnp.abs(g_bad - g_ll).max()) > 0.1


def test_m_step_single_samples_unbiased():
    """The M-step's one-sample gradient, averaged over many exact posterior samples, matches."""
    x = _data(32)
    post = MODEL.exact_posterior(THETA, x)
    S = 4000
    idx = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(post), axis=-1, shape=(S, 32))
    Z = MODEL.all_latents()

    def g(k):
        z = Z[idx[k]][:, None]
        return jax.grad(lambda th: em.expected_nll(MODEL.log_joint, th, x, z,
                                                   jnp.ones((32, 1))))(THETA)

    g_mc = jnp.mean(jax.lax.map(g, jnp.arange(S)), axis=0)
    g_ll = jax.grad(lambda th: -MODEL.loglik(th, x))(THETA)
    np.testing.assert_allclose(g_mc, g_ll, atol=0.15)


@pytest.mark.parametrize("back,start_exact", [(2, False), (1, True)])
def test_local_search_leaves_posterior_invariant(back, start_exact):
    """MH local search: from P_F samples (back=2, independence proposal) the chains converge to
    p(z | x); from exact samples (back=1) they stay there. Exact target by enumeration."""
    gfn = _gfn(hidden=16)
    params = gfn.init(jax.random.PRNGKey(1), X0)
    xp = jnp.asarray([0.1, -0.3], jnp.float32)
    B = 4000
    cond = jnp.broadcast_to(xp, (B, 2))
    lr = lambda th, c, s: MODEL.log_joint(th, c, s.tokens)
    post = MODEL.exact_posterior(THETA, xp[None])[0]
    if start_exact:
        zi = jax.random.categorical(jax.random.PRNGKey(2), jnp.log(post), shape=(B,))
        term = jax.vmap(latent_to_state)(MODEL.all_latents()[zi])
    else:
        term = gfn.sample(params, jax.random.PRNGKey(2), B, lr, THETA, cond).terminal
    out, acc = jax.jit(lambda t: em.local_search(gfn, lr, THETA, params, jax.random.PRNGKey(3), t,
                                                 cond, 60, back))(term)
    idx = np.asarray(out.tokens[:, 0] * 4 + out.tokens[:, 1])
    emp = np.bincount(idx, minlength=16) / B
    tv = 0.5 * np.abs(emp - np.asarray(post)).sum()
    assert 0 < float(jnp.mean(acc)) < 1
    assert tv < 0.04, tv
    if not start_exact:  # the proposal alone is far from the target: the MH step did the work
        q = metrics.terminal_distribution(ENV, gfn.policy, params, metrics.transition_table(ENV),
                                          cond=xp)[ENV.terminal_indices()]
        assert 0.5 * float(jnp.abs(q - post).sum()) > 0.3


def _run(cfg, data, steps, theta0=THETA, eps=0.0):
    gfn = _gfn(hidden=32, eps=eps)
    params = gfn.init(jax.random.fold_in(jax.random.PRNGKey(0), 0x7FFFFFFF), X0)
    gtx = policy_optimizer(gfn, OptimConfig(1e-2, 3e-2), params)
    mtx = optax.sgd(0.1)
    step = em.make_em_step(gfn, em.LatentModel(MODEL.log_joint, MODEL.sample), cfg, gtx, mtx,
                           z_to_state=latent_to_state)
    st = loop.init_state(params, gtx, theta0, mtx, jax.random.PRNGKey(0))
    chunk = loop.make_chunk(step, steps, em.batch_fn(cfg, data.shape[0]),
                            eval_fn=lambda s, d: {"loglik": MODEL.loglik(s.model, d)})
    st, m = chunk(st, data)
    return gfn, st, jax.device_get(m)


def test_fixed_and_adaptive_schedules():
    data = _data(128)
    cfg = em.EMConfig(e_batch=16, m_batch=32, schedule="fixed", e_steps=3, m_steps=2)
    _, st, m = _run(cfg, data, 20)
    t = np.arange(20)
    np.testing.assert_array_equal(m["e_step"], t % 5 < 3)
    np.testing.assert_array_equal(m["m_step"], t % 5 >= 3)
    assert int(st.step) == 20
    # theta changes exactly at M-steps
    cfg = em.EMConfig(e_batch=16, schedule="adaptive", threshold_start=3e4, threshold_end=0.0,
                      threshold_steps=30, sleep_prob=0.5, ls_rounds=2, ls_back=1)
    _, st, m = _run(cfg, data, 40)
    assert m["e_step"].all()
    np.testing.assert_allclose(m["threshold"], np.maximum(3e4 - 3e4 * np.arange(40) / 30, 0.0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(m["m_step"], m["ema"] < m["threshold"])
    ema = [m["loss"][0]]
    for l in m["loss"][1:]:
        ema.append(0.9 * ema[-1] + 0.1 * l)
    np.testing.assert_allclose(m["ema"], ema, rtol=1e-5)
    assert 0 < m["sleep"].sum() < 40
    assert m["m_step"].any() and not m["m_step"].all()
    assert (m["ls_accept"][m["m_step"]] > 0).all()
    ll = m["loglik"]
    moved = np.concatenate([[True], np.diff(ll) != 0])
    assert not moved[1:][~m["m_step"][1:]].any()


def test_e_step_alone_matches_exact_posterior():
    """At fixed theta (no M-step), the trained GFlowNet's exact sampling distribution matches
    p_theta(z | x): TV < 0.02 averaged over data points (computed by dynamic programming)."""
    data = _data(4000, seed=0)
    theta = jnp.asarray(GENERATING_MEANS, jnp.float32)
    cfg = em.EMConfig(e_batch=256, schedule="fixed", e_steps=10 ** 6, m_steps=1)
    module = MLPPolicy(4, 1, hidden=128, n_layers=2, uniform_pb=True, conditional=True)
    gfn = GFlowNet(ENV, module, objectives.tb(), Exploration(1.0, 0.1))
    params = gfn.init(jax.random.PRNGKey(0), X0)
    gtx = policy_optimizer(gfn, OptimConfig(1e-2, 3e-2), params)
    mtx = optax.sgd(0.1)
    step = em.make_em_step(gfn, em.LatentModel(MODEL.log_joint), cfg, gtx, mtx)
    st = loop.init_state(params, gtx, theta, mtx, jax.random.PRNGKey(0))
    chunk = jit_o2(loop.make_chunk(step, 1000, em.batch_fn(cfg, data.shape[0])))  # run-bound
    for _ in range(3):
        st, m = chunk(st, data)
    assert not np.asarray(m["m_step"]).any()
    np.testing.assert_array_equal(np.asarray(st.model), np.asarray(theta))
    table = metrics.transition_table(ENV)
    ti = ENV.terminal_indices()
    xs = data[:1000]
    q = jax.jit(jax.vmap(lambda c: metrics.terminal_distribution(ENV, gfn.policy, st.sampler,
                                                                 table, cond=c)[ti]))(xs)
    tv = float(jnp.mean(0.5 * jnp.sum(jnp.abs(q - MODEL.exact_posterior(theta, xs)), -1)))
    assert tv < 0.02, tv


def test_config_validation():
    with pytest.raises(ValueError, match="schedule"):
        em.EMConfig(schedule="sometimes").validate(100, 2)
    with pytest.raises(ValueError, match="ls_back"):
        em.EMConfig(ls_back=3).validate(100, 2)
    with pytest.raises(ValueError, match="sleep_prob"):
        em.EMConfig(sleep_prob=1.5).validate(100, 2)
    with pytest.raises(ValueError, match="m_batch_size"):
        em.EMConfig(m_batch=101).validate(100, 2)
    em.EMConfig().validate(100, 2)


def test_fixed_updates_counts_the_schedules_steps():
    cfg = em.EMConfig(e_batch=16, m_batch=32, schedule="fixed", e_steps=3, m_steps=2)
    _, _, m = _run(cfg, _data(64), 13)
    assert em.fixed_updates(13, 3, 2) == (int(m["e_step"].sum()), int(m["m_step"].sum())) == (9, 4)
    assert [em.fixed_updates(n, 4, 4)[1] for n in (3, 4, 5, 8, 11, 12)] == [0, 0, 1, 4, 4, 4]


def test_sleep_by_select_equals_sleep_by_branch():
    """``sleep_select`` (jnp.where, for XLA:CPU) takes the same sleep steps with the same result
    as the lax.cond branch."""
    data = _data(64)
    cfg = em.EMConfig(e_batch=16, m_batch=32, schedule="fixed", e_steps=3, m_steps=1,
                      sleep_prob=0.5)
    _, st0, m0 = _run(cfg, data, 12)
    _, st1, m1 = _run(dataclasses.replace(cfg, sleep_select=True), data, 12)
    np.testing.assert_array_equal(m0["sleep"], m1["sleep"])
    assert 0 < m0["sleep"][m0["e_step"]].sum() < m0["e_step"].sum()
    for a, b in zip(jax.tree.leaves(st0), jax.tree.leaves(st1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
