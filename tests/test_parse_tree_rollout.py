"""Bucketed parse-tree rollout and evaluation (``grammar.rollout``); the E-step through the
library's ``GFlowNet`` with the ``Buckets`` engine (two passes, one differentiable pass, packed)."""
import dataclasses

import jax
import numpy as np
import pytest

from gfnem_jax import objectives
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.grammar import rules as gm
from gfnem_jax.grammar import rollout as pb

from _parse_tree import (CORE_EVAL, ENV, EVAL, L, NT, POL, SENTS, V, batch,  # noqa: F401
                         params, traj)  # params, traj: the shared module fixtures


def estep_gfn(n_buckets=2, pack=0, one_pass=False, pol=POL):
    """The grammar E-step's GFlowNet (as ``grammar.gfn_em.build`` makes it): SubTB(1), the
    ``Buckets`` engine, forward-looking flows from the grammar (the reward parameters)."""
    return GFlowNet(ENV, pol, objectives.subtb(lam=1.0), engine=pb.Buckets(n_buckets, pack),
                    flow_offset=ENV.partial_log_reward, one_pass=one_pass)


def test_trajectories_have_n_minus_1_legal_steps(traj):
    n = np.array([len(s) for s in SENTS])
    assert np.array_equal(np.asarray(traj.lengths), np.maximum(n - 1, 0))
    fmask = jax.vmap(jax.vmap(ENV.forward_mask))(jax.tree.map(lambda a: a[:, :-1], traj.states))
    legal = np.take_along_axis(np.asarray(fmask), np.asarray(traj.actions)[..., None], -1)[..., 0]
    assert legal[np.asarray(traj.mask)].all()
    assert np.asarray(jax.vmap(ENV.is_terminal)(traj.terminal)).all()


def test_bucketed_evaluation_matches_the_full_pass_and_the_core(params, traj):
    full = EVAL(ENV, POL, params, traj, 1)
    core = CORE_EVAL(ENV, POL, params, traj)
    for nb in (2, L):
        ev = EVAL(ENV, POL, params, traj, nb)
        for a, b in zip(ev, full):
            np.testing.assert_allclose(a, b, atol=2e-5)
    for a, b in zip(core, full):
        np.testing.assert_allclose(a, b, atol=2e-5)
    # the sampling pass recorded the same target log-probs (on-policy: log pi = log P_F)
    np.testing.assert_allclose(traj.log_pf, full.log_pf, atol=2e-5)
    np.testing.assert_allclose(traj.log_pi, traj.log_pf, atol=1e-6)


def test_estep_gradient_and_forward_looking_flows(params, traj):
    g = gm.random_grammar(jax.random.PRNGKey(5), NT, 2, V)
    lr = jax.vmap(lambda c, s: ENV.log_reward(g, c, s))(traj.cond, traj.terminal)
    tr = traj._replace(log_reward=lr)
    gfn = estep_gfn()
    loss, grads = jax.jit(jax.value_and_grad(lambda p: gfn.traj_loss(p, tr, g)))(params)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))
    ev = EVAL(ENV, POL, params, tr, 2)
    fl = jax.jit(gfn.with_flow_offset)(ev, tr, g)
    # the added term is 0 at s_0 and log p(x, z) at the terminal state of each trajectory
    d = np.asarray(fl.log_flow - ev.log_flow)
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-6)
    n = np.asarray(tr.lengths)
    for b in range(len(SENTS)):
        if len(SENTS[b]) >= 2:
            np.testing.assert_allclose(d[b, n[b]], lr[b], rtol=1e-5, atol=1e-4)


def test_one_pass_estep_equals_rollout_then_evaluation(params):
    """The bucketed differentiable rollout (``one_pass``): the same trajectories, loss and
    gradient as the bucketed rollout + evaluation, and as the core's one-pass rollout (full
    observation, T + 1 passes) on the same key."""
    g = gm.random_grammar(jax.random.PRNGKey(5), NT, 2, V)
    cond, key = batch(SENTS), jax.random.PRNGKey(4)
    B = len(SENTS)

    def one(gfn):
        def f(q):
            t, tr = gfn.rollout_terms(q, key, B, ENV.log_reward, g, cond)
            return gfn.value(t, tr), tr
        return f

    @jax.jit
    def both(p):
        gfn = estep_gfn()
        tr = gfn.rollout(p, key, B, ENV.log_reward, g, cond)
        two = jax.value_and_grad(lambda q: gfn.traj_loss(q, tr, g))(p)
        core = dataclasses.replace(gfn, engine=None, one_pass=True)
        return (jax.value_and_grad(one(estep_gfn(one_pass=True)), has_aux=True)(p), two, tr,
                jax.value_and_grad(one(core), has_aux=True)(p))

    ((l1, tr1), g1), (l2, g2), tr2, ((l3, tr3), g3) = both(params)
    for tr in (tr1, tr3):
        assert np.array_equal(np.asarray(tr.actions), np.asarray(tr2.actions))
        np.testing.assert_allclose(tr.log_reward, tr2.log_reward, rtol=1e-6)
    np.testing.assert_allclose(tr1.log_pf, tr3.log_pf, atol=2e-5)
    np.testing.assert_allclose(tr1.log_pb, tr3.log_pb, atol=2e-5)
    for l, gr in ((l1, g1), (l3, g3)):
        np.testing.assert_allclose(l, l2, rtol=1e-4)
        for a, b in zip(jax.tree.leaves(gr), jax.tree.leaves(g2)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("chunk,step", [(4, 1), (3, 2), (64, 4)])
def test_packed_evaluation_equals_the_bucketed_one(params, traj, chunk, step):
    """States packed across sentences by root count (chunks that mix sentences, a partial last
    chunk, one chunk for everything): the same log P_F, log P_B, and log F wherever the network
    is needed (every state but the terminal one and the padding after it)."""
    full = EVAL(ENV, POL, params, traj, 1)
    ev = jax.jit(pb.evaluate_packed, static_argnums=(0, 1, 4, 5))(ENV, POL, params, traj, chunk, step)
    np.testing.assert_allclose(ev.log_pf, full.log_pf, atol=2e-5)
    np.testing.assert_allclose(ev.log_pb, full.log_pb, atol=2e-5)
    n = np.asarray(traj.lengths)
    t = np.arange(L)[None, :]
    need = t < n[:, None]  # states 0..n-2 of an n-word sentence (n - 1 steps)
    np.testing.assert_allclose(np.where(need, ev.log_flow, 0), np.where(need, full.log_flow, 0),
                               atol=2e-5)
    assert np.all(np.asarray(ev.log_flow)[~need] == 0)
    assert pb.pack_sizes(L, step)[-1] == L and min(pb.pack_sizes(L, step)) >= 2


def test_packed_estep_has_the_same_loss_and_gradient(params, traj):
    g = gm.random_grammar(jax.random.PRNGKey(5), NT, 2, V)
    lr = jax.vmap(lambda c, s: ENV.log_reward(g, c, s))(traj.cond, traj.terminal)
    tr = traj._replace(log_reward=lr)

    @jax.jit
    def both(p):
        f = lambda pack: jax.value_and_grad(lambda q: estep_gfn(2, pack).traj_loss(q, tr, g))(p)
        return f(0), f(4)

    (l1, g1), (l2, g2) = both(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("ncfg", [False, True], ids=["cfg", "ncfg"])
def test_forward_looking_flow_path_equals_the_per_state_values(params, traj, ncfg):
    """``partial_log_reward_path`` (each node scored once, in the last state) gives
    ``partial_log_reward`` at every state of the sampled trajectories, padding included (the
    terminal state is repeated there), for the CFG and the NCFG; and ``GFlowNet.with_flow_offset``
    adds the same flows with either form."""
    g = gm.random_grammar(jax.random.PRNGKey(7), NT, 2, V, scale=3.0, ncfg=ncfg)
    per = jax.jit(jax.vmap(lambda c, st: jax.vmap(lambda s: ENV.partial_log_reward(g, c, s))(st)))
    path = jax.jit(jax.vmap(lambda c, st: ENV.partial_log_reward_path(g, c, st)))
    a, b = np.asarray(per(traj.cond, traj.states)), np.asarray(path(traj.cond, traj.states))
    assert a.shape == b.shape == traj.actions.shape[:1] + (traj.actions.shape[1] + 1,)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-5)
    n = np.array([len(x) for x in SENTS])
    assert (n >= 2).sum() >= 2 and np.abs(a[n >= 2, -1]).min() > 0  # log p(x, z): not trivially 0
    one = GFlowNet(ENV, POL, objectives.subtb(lam=1.0), flow_offset=ENV.partial_log_reward)
    two = dataclasses.replace(one, flow_offset_path=ENV.partial_log_reward_path)
    zero = traj._replace(log_flow=np.zeros_like(np.asarray(traj.log_flow)))
    # backward-sampled trajectories (sleep phase, local search) also end with their terminal state
    back = one.sample_backward(params, jax.random.PRNGKey(2), traj.terminal,
                               ENV.log_reward, g, traj.cond)
    np.testing.assert_allclose(np.asarray(path(back.cond, back.states)),
                               np.asarray(per(back.cond, back.states)), rtol=1e-6, atol=1e-5)
    from gfnem_jax.sampling import Evaluation
    ev = Evaluation(zero.log_pf, zero.log_pb, zero.log_flow)
    np.testing.assert_allclose(np.asarray(jax.jit(two.with_flow_offset)(ev, traj, g).log_flow),
                               np.asarray(jax.jit(one.with_flow_offset)(ev, traj, g).log_flow),
                               rtol=1e-6, atol=1e-5)
