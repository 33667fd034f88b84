"""The span policy (``grammar.span_policy.SpanPolicy``, setting policy=span): it learns the exact
posterior over trees of one sentence, and its outputs depend neither on the padding nor on the
other sentences of a batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.grammar import gfn_em as GF
from gfnem_jax.grammar.env import ParseTree, make_cond
from gfnem_jax.grammar.policy import shrink
from gfnem_jax.grammar.settings import GrammarSettings
from gfnem_jax.grammar.span_policy import SpanPolicy

from _tiny_grammar import L, LENGTHS, MODEL, THETA, V, WORDS, exact, grammar_settings, train_posterior


def settings(**kw):
    return grammar_settings(dict(policy="span"), **kw)


def test_setting_chooses_the_policy():
    assert GrammarSettings().policy == "transformer"
    assert type(GF.build(settings(policy="transformer"), MODEL, V).gfn.policy).__name__ == "ParsePolicy"
    assert isinstance(GF.build(settings(), MODEL, V).gfn.policy, SpanPolicy)


def test_span_policy_learns_the_exact_posterior_of_one_sentence():
    """As tests/test_grammar_gfn.py's transformer test: posterior-only E-step (SubTB(1),
    forward-looking flows, learned P_B, log Z(x)) on one 4-word sentence of a fixed grammar,
    1000 steps at lr 1e-3 then 250 at 1e-4; the exact terminal distribution of P_F (dynamic
    programming over all 40 labelled trees) is within TV 0.05 of p(z | x)."""
    b, st0, st, m = train_posterior(settings)
    before = exact(b, st0)
    after = exact(b, st)
    assert np.isfinite(np.asarray(m["loss"])).all()
    assert before["exact_tv"] > 0.1, before  # the untrained sampler is far from the posterior
    assert after["exact_tv"] < 0.05, after
    assert after["exact_kl"] < 0.05 and after["exact_sentences"] == 1


def _trajectory_outputs(pol, env, params, cond, K=None):
    """Outputs of every state of a fixed trajectory (always merge roots 0, 1 under label
    t % NT) of one sentence: (fwd logits of the legal merges, bwd logits of the roots, flows)
    per state, on K root slots (default all)."""
    ctx = pol.encode_cond(params, cond)
    s, out = env.init(cond), []
    n = int(cond["length"])
    for t in range(n - 1):
        r = n - t
        o = pol.apply(params, shrink(env.observe(s), K or env.max_len), ctx)
        out.append((np.asarray(o.fwd_logits[:(r - 1) * env.n_nt]), np.asarray(o.bwd_logits[:r]),
                    float(o.log_flow)))
        s = env.step(s, jnp.asarray(t % env.n_nt, jnp.int32))
    return out, float(pol.log_z(params, ctx))


def test_outputs_do_not_depend_on_padding_or_batch():
    """The same sentence: alone (max_len 8), in a vmapped batch with two other sentences, and on
    fewer root slots (shrink to the live count) gives the same logits, flows and log Z(x)."""
    Lb = 8
    env = ParseTree(Lb, 3)
    pol = SpanPolicy(Lb, 3, 11, dim=32, heads=2, enc_layers=1)
    c = make_cond([3, 1, 4, 1, 5], Lb)
    params = pol.init(jax.random.PRNGKey(0), env.observe(env.init(c)), c)
    alone, lz = _trajectory_outputs(pol, env, params, c)
    # shrunk to exactly the live roots at each state: the same numbers
    ctx = pol.encode_cond(params, c)
    s = env.init(c)
    for t, (f, bwd, fl) in enumerate(alone):
        r = 5 - t
        o = pol.apply(params, shrink(env.observe(s), r), ctx)
        np.testing.assert_allclose(o.fwd_logits[:(r - 1) * 3], f, atol=1e-5)
        np.testing.assert_allclose(o.bwd_logits[:r], bwd, atol=1e-5)
        np.testing.assert_allclose(float(o.log_flow), fl, atol=1e-5)
        s = env.step(s, jnp.asarray(t % 3, jnp.int32))
    # in a batch with other sentences (vmapped as the library does)
    others = [make_cond([2, 2, 9, 7, 6, 5, 4, 3], Lb), c, make_cond([10, 0], Lb)]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *others)
    ctxs = jax.vmap(pol.encode_cond, (None, 0))(params, batch)
    lzs = jax.vmap(pol.log_z, (None, 0))(params, ctxs)
    np.testing.assert_allclose(float(lzs[1]), lz, atol=1e-5)
    states = jax.vmap(env.init)(batch)
    for t, (f, bwd, fl) in enumerate(alone):
        r = 5 - t
        o = jax.vmap(lambda ob, cx: pol.apply(params, ob, cx))(jax.vmap(env.observe)(states), ctxs)
        np.testing.assert_allclose(o.fwd_logits[1, :(r - 1) * 3], f, atol=1e-5)
        np.testing.assert_allclose(o.bwd_logits[1, :r], bwd, atol=1e-5)
        np.testing.assert_allclose(float(o.log_flow[1]), fl, atol=1e-5)
        a = jnp.asarray([0, t % 3, 0], jnp.int32)
        states = jax.vmap(lambda st, aa, live: jax.tree.map(
            lambda x, y: jnp.where(live, x, y), env.step(st, aa), st))(
            states, a, states.r > 1)
    # and a different padding length of the same trailing token ids does not matter
    c2 = dict(c, tokens=c["tokens"].at[6].set(7))
    alone2, lz2 = _trajectory_outputs(pol, env, params, c2)
    assert lz2 == pytest.approx(lz, abs=1e-6)
    for (f, bwd, fl), (f2, bwd2, fl2) in zip(alone, alone2):
        np.testing.assert_allclose(f, f2, atol=1e-6)
        np.testing.assert_allclose(fl, fl2, atol=1e-6)
