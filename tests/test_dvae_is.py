"""Importance-sampled log p(x) of the discrete VAE against enumeration (2x2 grid, K = 3)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import metrics
from gfnem_jax.envs.sequence import Sequence
from gfnem_jax.experiments import dvae_eval as ev
from gfnem_jax.models.dvae import DVAE
from gfnem_jax.models.dvae_encoder import DVAEEncoder
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput

G, K = 2, 3
L = G * G


@pytest.fixture(scope="module")
def setup():
    model = DVAE(image_shape=(6, 6), grid=G, codes=K, channels=8, embed_dim=4, prior="learned",
                 prior_hidden=16)
    theta = model.init(jax.random.PRNGKey(0))
    env = Sequence(L, K)
    x = jnp.asarray(np.random.default_rng(0).random((2, 6, 6)) > 0.5, jnp.float32)
    return model, theta, env, x


def _exact_posterior_policy(model, theta, x):
    """P_F(z_n = v | z_<n) = p(z_<n, z_n = v | x), from the enumerated joint (one image x)."""
    lj = jax.vmap(lambda z: model.log_joint(theta, x, z))(model.all_latents()).reshape((K,) * L)
    tables = []
    for n in range(L):
        m = jax.nn.logsumexp(lj, axis=tuple(range(n + 1, L))) if n + 1 < L else lj
        tables.append(jnp.pad(m.reshape(-1), (0, K ** L - K ** (n + 1))))
    tables = jnp.stack(tables)  # [L, K^L]

    def apply_fn(params, obs, ctx):
        oh = obs.reshape(L, K)
        n = jnp.round(jnp.sum(oh)).astype(jnp.int32)
        tok = jnp.argmax(oh, axis=1)
        pref = jnp.sum(jnp.where(jnp.arange(L) < n, tok * K ** jnp.maximum(n - 1 - jnp.arange(L), 0), 0))
        logits = tables[jnp.minimum(n, L - 1), pref * K + jnp.arange(K)]
        return PolicyOutput(logits, jnp.zeros((1,)), jnp.zeros(()))

    return FunctionalPolicy(lambda k, o, c: {}, apply_fn, lambda p, c: jnp.zeros(()),
                            encode_cond_fn=lambda p, c: None)


def test_is_estimate_matches_enumeration(setup):
    model, theta, env, x = setup
    pol = DVAEEncoder(grid=G, codes=K, channels=4, ctx_dim=8, hidden=16)
    params = pol.init(jax.random.PRNGKey(1), env.observe(env.init()), x[0])
    exact = np.array([float(model.exact_log_marginal(theta, xi)) for xi in x])
    ll = ev.is_log_likelihood(env, pol, params, model.log_joint, theta, x, jax.random.PRNGKey(2),
                              n_samples=10000, rows=5000)
    np.testing.assert_allclose(ll, exact, atol=0.03)
    # the budget changes nothing but the batching
    ll_small = ev.is_log_likelihood(env, pol, params, model.log_joint, theta, x, jax.random.PRNGKey(2),
                                    n_samples=300, rows=128)
    ll_big = ev.is_log_likelihood(env, pol, params, model.log_joint, theta, x, jax.random.PRNGKey(2),
                                  n_samples=300, rows=600)
    np.testing.assert_allclose(ll_small, ll_big, atol=1e-4)
    # the unbiased weights' mean over the exact q is exactly p(x)
    table = metrics.transition_table(env)
    ti = env.terminal_indices()
    for xi, e in zip(x, exact):
        q = metrics.terminal_distribution(env, pol, params, table, cond=xi)[ti]
        lj = jax.vmap(lambda z: model.log_joint(theta, xi, z))(model.all_latents())
        assert abs(float(jax.nn.logsumexp(jnp.log(q) + lj - jnp.log(q))) - e) < 1e-4


def test_sampled_log_q_is_exact(setup):
    model, theta, env, x = setup
    pol = DVAEEncoder(grid=G, codes=K, channels=4, ctx_dim=8, hidden=16)
    params = pol.init(jax.random.PRNGKey(3), env.observe(env.init()), x[0])
    z, lq = ev.sample_codes(env, pol, params, jax.random.PRNGKey(4), x, 50)
    table = metrics.transition_table(env)
    ti = env.terminal_indices()
    base = K ** jnp.arange(L - 1, -1, -1)
    for i in range(len(x)):
        q = metrics.terminal_distribution(env, pol, params, table, cond=x[i])[ti]
        idx = jnp.sum(z[i] * base, axis=-1)
        np.testing.assert_allclose(np.asarray(lq[i]), np.log(np.asarray(q)[np.asarray(idx)]), atol=1e-4)


def test_exact_posterior_proposal_has_zero_variance(setup):
    model, theta, env, x = setup
    for xi in x:
        pol = _exact_posterior_policy(model, theta, xi)
        fn = ev.make_log_weights(env, pol, model.log_joint, 1, 400)
        w = np.asarray(fn({}, theta, xi[None], jax.random.PRNGKey(5), jnp.int32(0), jnp.int32(0)))[0]
        exact = float(model.exact_log_marginal(theta, xi))
        assert np.std(w) < 1e-4
        np.testing.assert_allclose(w, exact, atol=2e-4)
