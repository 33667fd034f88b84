"""ParsePolicy: shrunk observations, padding / batch invariance, encode once, sizes."""
import dataclasses

import jax
import numpy as np
import pytest

from gfnem_jax import objectives
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.grammar.env import ParseTree, make_cond
from gfnem_jax.grammar import rollout as pb
from gfnem_jax.grammar.policy import ParsePolicy, shrink

from _parse_tree import (ENV, EVAL, L, NT, POL, ROLLOUT, SENTS, V, batch,  # noqa: F401
                         params, traj)  # params, traj: the shared module fixtures


def test_padding_and_batch_composition_do_not_change_log_probs(params, traj):
    """Sentence 2's trajectory scored alone, and inside batches of other sentences."""
    one = jax.tree.map(lambda a: a[2:3], traj)
    alone = EVAL(ENV, POL, params, one, 2)
    others = [SENTS[2]] + [[5] * k for k in (5, 2, 1, 3)]
    other = ROLLOUT(params, jax.random.PRNGKey(9), batch(others))
    mixed = jax.tree.map(lambda a, b: a.at[0].set(b[0]), other, one)
    for nb in (1, 2):
        ev = EVAL(ENV, POL, params, mixed, nb)
        for a, b in zip(ev, alone):
            np.testing.assert_allclose(a[0], b[0], atol=2e-5)
    lz = jax.vmap(POL.log_z, (None, 0))(params, jax.vmap(POL.encode_cond, (None, 0))(params, mixed.cond))
    lz1 = POL.log_z(params, POL.encode_cond(params, jax.tree.map(lambda a: a[0], one.cond)))
    np.testing.assert_allclose(lz[0], lz1, atol=2e-5)


def test_shrunk_observation_gives_the_same_outputs(params):
    c = make_cond(SENTS[3], L)
    s = ENV.step(ENV.step(ENV.init(c), 1 * NT + 2), 0)  # 3 roots left
    ctx = POL.encode_cond(params, c)
    full = POL.apply(params, ENV.observe(s), ctx)
    for K in (3, 5):
        out = jax.jit(POL.apply)(params, shrink(ENV.observe(s), K), ctx)
        np.testing.assert_allclose(out.fwd_logits[: 2 * NT], full.fwd_logits[: 2 * NT], atol=1e-5)
        np.testing.assert_allclose(out.bwd_logits[:3], full.bwd_logits[:3], atol=1e-5)
        np.testing.assert_allclose(out.log_flow, full.log_flow, atol=1e-5)


_CALLS = {"encode": 0, "apply": 0}


@dataclasses.dataclass(frozen=True)
class CountingPolicy(ParsePolicy):
    """Counts how often each method is traced (Python side effects run once per trace)."""

    def encode_cond(self, params, cond):
        _CALLS["encode"] += 1
        return super().encode_cond(params, cond)

    def apply(self, params, obs, ctx):
        _CALLS["apply"] += 1
        return super().apply(params, obs, ctx)


def test_encode_cond_runs_once_per_trajectory_not_per_state(params):
    pol = CountingPolicy(L, NT, V, dim=32, layers=1, heads=4, enc_layers=1)
    cond = batch(SENTS)
    seen = []
    real = POL.encode_cond

    def spy(p, c):  # records the shape of what the encoder is run on
        seen.append(c["tokens"].shape)
        return real(p, c)

    _CALLS.update(encode=0, apply=0)
    # tracing (no compilation) runs the Python bodies once per trace
    traj = jax.eval_shape(lambda p, k, c: pb.rollout(ENV, pol, p, k, c, n_buckets=2),
                          params, jax.random.PRNGKey(2), cond)
    assert _CALLS["encode"] == 1 and _CALLS["apply"] == 2  # one trace per time bucket
    gfn = GFlowNet(ENV, pol, objectives.subtb(lam=1.0), engine=pb.Buckets(2))
    loss = jax.eval_shape(gfn.traj_loss, params, traj)
    # the loss: one vmapped encode shared by the evaluation and log Z
    assert _CALLS["encode"] == 2 and loss.shape == ()
    # encode_batch vmaps the encoder over the batch axis only: it sees one sentence [L]
    from gfnem_jax.nets.policy import encode_batch
    ctx = jax.eval_shape(lambda p, c: encode_batch(
        dataclasses.replace(pol), p, c), params, cond)
    assert ctx["cum"].shape == (len(SENTS), L + 1, 32)
    jax.eval_shape(jax.vmap(spy, (None, 0)), params, cond)
    assert seen == [(L,)]


def test_paper_size_and_log_z_mask():
    pol = ParsePolicy.paper(20, 30, 100)
    c = make_cond([1, 2, 3], 20)
    env = ParseTree(20, 30)
    shapes = jax.eval_shape(lambda k: pol.init(k, env.observe(env.init(c)), c), jax.random.PRNGKey(0))
    assert shapes["params"]["blocks_5"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (512, 4, 128)
    p = POL.init(jax.random.PRNGKey(0), ENV.observe(ENV.init(make_cond([1, 2], L))), make_cond([1, 2], L))
    m = POL.log_z_mask(p)
    flat = jax.tree_util.tree_flatten_with_path(m)[0]
    assert any(v for _, v in flat) and not all(v for _, v in flat)
    assert all(v == ("logz_mlp" in jax.tree_util.keystr(k)) for k, v in flat)
    with pytest.raises(ValueError, match="heads"):
        ParsePolicy(L, NT, V, dim=30, heads=4)

