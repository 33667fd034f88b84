"""Compute on real states (``gfnem_jax.packing``, ``GFlowNet(compact=True)``, ``--no-compact``).

Packing changes which rows the policy is run on, never what a row gets: ``live_apply`` equals the
function on the live rows (and its gradient the gradient of the masked full computation), and a
compacted rollout draws the same trajectories as the full one with the same log-probabilities
(to float rounding), forward and backward, one pass or two, on environments whose trajectories
end at different times; reruns are bitwise equal."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from gfnem_jax import cli, objectives, packing, sampling
from gfnem_jax.envs.hypergrid import HyperGrid
from gfnem_jax.envs.dag import DAGEnv
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.nets import MLPPolicy
from gfnem_jax.sampling import Exploration

W = jax.random.normal(jax.random.PRNGKey(0), (3, 5))


def _fn(params, rows):
    x, k = rows  # a float and an integer leaf per row
    return {"y": jnp.tanh(x @ params) * (k[:, None] + 1.0), "s": jnp.sum(x, -1)}


def test_block_rows():
    assert packing.block_rows(1024, 8) == 128
    assert packing.block_rows(100, 8) == 16
    assert packing.block_rows(8, 8) == 8
    with pytest.raises(ValueError, match="blocks"):
        packing.block_rows(10, 0)


@given(st.lists(st.booleans(), min_size=12, max_size=12), st.sampled_from([1, 3, 5, 12]))
def test_live_apply_is_the_function_on_live_rows(live, block):
    n = len(live)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 3))
    k = jnp.arange(n, dtype=jnp.int32) % 3
    live = jnp.asarray(live)
    out = packing.live_apply(_fn, W, (x, k), live, block)
    full = _fn(W, (x, k))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(full)):
        m = np.asarray(live).reshape((-1,) + (1,) * (a.ndim - 1))
        np.testing.assert_allclose(np.asarray(a) * m, np.asarray(b) * m, rtol=1e-6, atol=1e-6)
        if block < n:
            assert np.all(np.asarray(a)[~np.asarray(live)] == 0)

    def loss(p, x, f):
        o = f(p, x)
        return jnp.sum(jnp.where(live[:, None], o["y"], 0) ** 2) + jnp.sum(jnp.where(live, o["s"], 0))

    packed = lambda p, x: packing.live_apply(_fn, p, (x, k), live, block)
    g1 = jax.grad(loss, argnums=(0, 1))(W, x, packed)
    g2 = jax.grad(loss, argnums=(0, 1))(W, x, lambda p, x: _fn(p, (x, k)))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_live_apply_inside_a_differentiated_scan():
    """The rollout's use: live_apply in a scan body, differentiated through the scan."""
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 10, 3))
    k = jnp.zeros((10,), jnp.int32)

    def total(p, f):
        def body(c, xt):
            o = f(p, xt)
            return c + jnp.sum(o["y"]) + jnp.sum(o["s"]), None
        return jax.lax.scan(body, 0.0, x)[0]

    live = jnp.arange(10) < 7
    packed = lambda p, xt: packing.live_apply(_fn, p, (xt, k), live, 3)
    masked = lambda p, xt: jax.tree.map(lambda o: jnp.where(
        live.reshape((-1,) + (1,) * (o.ndim - 1)), o, 0.0), _fn(p, (xt, k)))
    np.testing.assert_allclose(np.asarray(jax.grad(total)(W, packed)),
                               np.asarray(jax.grad(total)(W, masked)), rtol=1e-5, atol=1e-5)


ENVS = [HyperGrid(3, 5, r0=0.1), DAGEnv(d=4)]


def _gfn(env, compact, **kw):
    pol = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=32)
    return GFlowNet(env, pol, objectives.tb(), Exploration(1.5, 0.05), compact=compact,
                    eval_buckets=(0.25, 0.5, 0.75, 1.0), **kw)


def _same(t1, t2):
    for f in ("actions", "bwd_actions", "mask", "lengths", "log_reward"):
        assert np.array_equal(np.asarray(getattr(t1, f)), np.asarray(getattr(t2, f))), f
    for a, b in zip(jax.tree.leaves(t1.states), jax.tree.leaves(t2.states)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for f in ("log_pf", "log_pb", "log_pi", "log_flow"):
        np.testing.assert_allclose(np.asarray(getattr(t1, f)), np.asarray(getattr(t2, f)),
                                   rtol=1e-5, atol=1e-5, err_msg=f)


@pytest.mark.parametrize("env", ENVS, ids=["hypergrid", "dag"])
def test_compacted_rollouts_draw_the_same_trajectories(env):
    B = 64
    full, comp = _gfn(env, False), _gfn(env, True)
    params = full.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(5)
    lr = env.log_reward
    rp = env.default_params()
    sample = lambda g: jax.jit(lambda p: g.sample(p, key, B, lr, rp, explore=g.explore))(params)
    t_full, t_comp = sample(full), sample(comp)
    _same(t_full, t_comp)
    lengths = np.asarray(t_full.lengths)
    assert lengths.min() < lengths.max()  # trajectories end at different times
    # the training rollout (sampling pass) draws the same steps too
    roll = lambda g: jax.jit(lambda p: g.rollout(p, key, B, lr, rp))(params)
    r1, r2 = roll(full), roll(comp)
    assert np.array_equal(np.asarray(r1.actions), np.asarray(r2.actions))
    np.testing.assert_allclose(np.asarray(r1.log_pi), np.asarray(r2.log_pi), atol=1e-5)
    # backward from the same terminal states
    back = lambda g: jax.jit(lambda p: g.sample_backward(p, key, t_full.terminal, lr, rp))(params)
    _same(back(full), back(comp))
    # reruns are bitwise equal
    again = sample(comp)
    for a, b in zip(jax.tree.leaves(t_comp), jax.tree.leaves(again)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("min_block", [16, None], ids=["blocks", "floor"])
def test_compacted_training_has_the_loss_and_gradient_of_the_full_one(one_pass, min_block,
                                                                        monkeypatch):
    """Also with the training pass's floor lowered (``MIN_EVAL_BLOCK`` 16, read when compiled),
    so that its B x (T+1) = 448 rows run as blocks of 112 instead of one."""
    if min_block:
        monkeypatch.setattr(sampling, "MIN_EVAL_BLOCK", min_block)
    env = ENVS[0]
    B = 32
    grads = []
    for compact in (False, True):
        g = _gfn(env, compact, one_pass=one_pass)
        params = g.init(jax.random.PRNGKey(0))

        def loss(p):
            if one_pass:
                t, traj = g.rollout_terms(p, jax.random.PRNGKey(3), B, env.log_reward)
            else:
                traj = g.rollout(p, jax.random.PRNGKey(3), B, env.log_reward)
                t = g.terms(p, traj)
            return g.value(t, traj)

        grads.append(jax.jit(jax.value_and_grad(loss))(params))
    (l0, g0), (l1, g1) = grads
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def test_cli_compact_is_on_by_default_and_trains_as_without(tmp_path, capsys):
    args = ["train", "hypergrid", "--ndim", "3", "--height", "4", "--r0", "0.1", "--steps", "6",
            "--log-every", "3", "--batch-size", "64", "--hidden", "16", "--quiet"]
    rows = {}
    for flag in ([], ["--no-compact"]):
        out = tmp_path / ("off" if flag else "on")
        cli.main(args + flag + ["--out", str(out)])
        rows[bool(flag)] = [json.loads(l) for l in open(out / "metrics.jsonl")]
        assert json.load(open(out / "config.json"))["compact"] is (not flag)
    for a, b in zip(rows[False], rows[True]):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-3 * max(1, abs(a["loss"]))
        assert abs(a["l1"] - b["l1"]) < 1e-3
    capsys.readouterr()


@pytest.mark.parametrize("differentiable", [False, True])
def test_parse_tree_rollout_compacts_parsed_sentences(differentiable):
    """The parse-tree engine: sentences of 1-5 words in one batch (0-4 merges); with a block of
    2 sentences the policy runs only on sentences not yet parsed: the same trees and values,
    and through the engine's one-pass E-step the same loss and gradient."""
    import sys
    import os
    sys.path.insert(0, os.path.dirname(__file__))
    from _parse_tree import ENV, POL, SENTS, batch
    from gfnem_jax.grammar import rollout as pb

    cond = batch(SENTS * 2)
    c0 = jax.tree.map(lambda a: a[0], cond)
    params = POL.init(jax.random.PRNGKey(0), ENV.observe(ENV.init(c0)), c0)
    roll = lambda p, block: pb.rollout(ENV, POL, p, jax.random.PRNGKey(1), cond, n_buckets=2,
                                       differentiable=differentiable, block=block)
    # log F at the terminal state is the reward's (the objectives set it): the compacted
    # rollout leaves it 0 instead of running the network there
    inner = lambda t: t._replace(log_flow=jnp.where(
        jnp.arange(t.log_flow.shape[1])[None] < t.lengths[:, None], t.log_flow, 0.0))
    full, comp = [inner(jax.jit(roll, static_argnums=1)(params, b)) for b in (None, 2)]
    _same(full, comp)

    def loss(p, block):
        t = inner(roll(p, block))
        return jnp.sum(t.log_pf) + jnp.sum(t.log_pb) + jnp.sum(t.log_flow)

    if differentiable:
        g0, g1 = [jax.jit(jax.grad(loss), static_argnums=1)(params, b) for b in (None, 2)]
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
