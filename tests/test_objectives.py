"""Objectives: their values, their flags against what the values read, option validation, off-policy
weights, the CLI, and a short training run."""
import json
import re
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from gfnem_jax import cli, losses, metrics, objectives
from gfnem_jax.envs.sets import SetGeneration
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.losses import divergences as div
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.sampling import Exploration, evaluate
from gfnem_jax import loop
from gfnem_jax.experiments.runner import init_state, make_step
from gfnem_jax.optim import OptimConfig

ENV = SetGeneration(6, 3)


def _gfn(name, explore=Exploration(), **kw):
    module = MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=16)
    return GFlowNet(ENV, module, objectives.get(name, **kw), explore)


@pytest.fixture(scope="module")
def batch():
    gfn = _gfn("tb")
    params = gfn.init(jax.random.PRNGKey(0))
    traj = gfn.sample(params, jax.random.PRNGKey(1), 8, ENV.log_reward)
    return gfn, params, traj


# every objective once with its default options, and every option value at least once
DEFAULTS = [objectives.OBJECTIVES[n]() for n in sorted(objectives.OBJECTIVES)]
VARIANTS = DEFAULTS + [objectives.subtb(lam=0.3), objectives.forward_kl(normalized=False)] + [
    objectives.reverse_kl(b) for b in objectives.BASELINES] + [
    f(alpha, cv) for f in (objectives.renyi, objectives.tsallis) for alpha in (0.5, 2.0)
    for cv in objectives.control_variates(f.name)] + [
    objectives.soft_q("none", 1.0), objectives.munchausen("none", 0.5, 0.3, -1.0),
    objectives.pcl("none", 0.5)] + [
    # alpha < 1: at alpha = 1 the reverse part, the learned log Z with it, is weighted 0
    objectives.alpha_kl(alpha, cv) for alpha in (0.0, 0.6)
    for cv in objectives.control_variates("alpha_kl")]
VARIANTS = [o for o in VARIANTS if not o.edge_flows]  # fm: tested through GFlowNet
_ids = lambda o: f"{o.name}-" + "-".join(str(v) for v in o.options.values())  # noqa: E731


@pytest.fixture(scope="module")
def explored():
    """A batch drawn with exploration (log_pi != log_pf), its evaluation and log Z."""
    gfn = _gfn("tb")
    params = gfn.init(jax.random.PRNGKey(0))
    traj = gfn.sample(params, jax.random.PRNGKey(2), 8, ENV.log_reward,
                      explore=Exploration(2.0, 0.2))
    return evaluate(ENV, gfn.policy, params, traj), traj, gfn.log_z(params)


def _noise(key, like, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(key), like.shape, like.dtype)


def _moved(obj, a, b):
    """Whether the objective's value differs between two inputs (ev, traj, log_z)."""
    return not np.isclose(float(obj(*a)), float(obj(*b)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("obj", DEFAULTS, ids=lambda o: o.name)
def test_exploration_is_refused_exactly_by_on_policy_objectives(obj):
    """on_policy objectives refuse tempering and eps-exploration (check_sampling and GFlowNet);
    importance-weighted and balance ones accept them; plain sampling fits every objective."""
    assert obj.balance == (not obj.on_policy and not obj.importance_weighted)
    assert not (obj.on_policy and obj.importance_weighted)
    obj.check_sampling(Exploration(), batch_size=obj.min_batch_size)
    for explore in (Exploration(2.0, 0.0), Exploration(1.0, 0.1)):
        if obj.on_policy:
            with pytest.raises(ValueError, match="on-policy"):
                obj.check_sampling(explore)
            with pytest.raises(ValueError, match="on-policy"):
                GFlowNet(ENV, MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=4), obj, explore)
        else:
            obj.check_sampling(explore)


@pytest.mark.parametrize("obj", DEFAULTS, ids=lambda o: o.name)
def test_one_pass_is_refused_exactly_for_edge_flows(obj):
    pol = MLPPolicy(ENV.n_actions, ENV.n_bwd_actions, hidden=4)
    if obj.soft_values:  # the RL view reads the soft values of the logits, not the flow head
        with pytest.raises(ValueError, match="one_pass"):
            GFlowNet(ENV, pol, obj, one_pass=True)
    elif obj.edge_flows:
        with pytest.raises(ValueError, match="one_pass"):
            GFlowNet(ENV, pol, obj, one_pass=True)
        with pytest.raises(ValueError, match="flow matching"):
            obj(None, None, None)
    else:
        GFlowNet(ENV, pol, obj, one_pass=True)


@pytest.mark.parametrize("obj", VARIANTS, ids=_ids)
def test_flags_match_what_the_value_reads(explored, obj):
    """needs_log_z: the value moves with log Z; uses_flows: with the flow head's outputs (or,
    soft_values, the soft values of the logits in its place); importance_weighted: with the
    behaviour log-probabilities; and never otherwise."""
    ev, traj, lz = explored
    base = (ev, traj, lz)
    assert _moved(obj, base, (ev, traj, lz + 0.5)) == obj.needs_log_z
    flows = ev._replace(log_flow=ev.log_flow + _noise(1, ev.log_flow))
    assert _moved(obj, base, (flows, traj, lz)) == (obj.uses_flows or obj.soft_values)
    pi = traj._replace(log_pi=traj.log_pi + _noise(2, traj.log_pi, 0.3) * traj.mask)
    assert _moved(obj, base, (ev, pi, lz)) == obj.importance_weighted


@pytest.mark.parametrize("obj", VARIANTS, ids=_ids)
def test_couples_samples_iff_one_gradient_row_reads_other_samples(explored, obj):
    """Without couples_samples, trajectory i's gradient row depends on trajectory i alone (the
    value is a mean of per-trajectory or per-transition terms): moving the rewards of every
    other trajectory leaves it unchanged. With it, some row moves."""
    ev, traj, lz = explored
    B = traj.log_reward.shape[0]
    grad = jax.grad(lambda e, lr: obj(e, traj._replace(log_reward=lr), lz))
    g0 = grad(ev, traj.log_reward).log_pf
    others = (1.0 - jnp.eye(B)) * _noise(3, jnp.zeros((B, B)))  # row i: move every j != i
    g = jax.vmap(lambda d: grad(ev, traj.log_reward + d).log_pf)(others)  # [B (moved), B, T]
    rows = jnp.arange(B)
    moved = ~np.isclose(np.asarray(g[rows, rows]), np.asarray(g0), rtol=1e-5, atol=1e-7).all(-1)
    assert moved.any() == obj.couples_samples, moved


@pytest.mark.parametrize("call,msg", [
    (lambda: objectives.subtb(alpha=0.5), "alpha is not an option of loss subtb; it takes: lam"),
    (lambda: objectives.tb(lam=0.5), "lam is not an option of loss tb; it takes: no options"),
    (lambda: objectives.renyi(baseline="loo"), "it takes: alpha, control_variate"),
    (lambda: objectives.get("tb", lamda=0.5), "lamda is not an option of any objective"),
    (lambda: objectives.get("kl"), "unknown loss 'kl'"),
])
def test_unknown_options_raise(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


@given(lam=st.floats(-1.0, 2.0), baseline=st.sampled_from(objectives.BASELINES + ("x",)),
       alpha=st.floats(-0.5, 2.5), control_variate=st.sampled_from(
           ("none", "loo", "learned", "loo_mean", "loo_logmeanexp", "mean")),
       normalized=st.booleans(), rl_correction=st.sampled_from(("pb", "none", "x")),
       tau=st.floats(-0.5, 1.5), munchausen_alpha=st.floats(-0.5, 1.5),
       munchausen_clip=st.floats(-30.0, 1.0))
def test_get_passes_each_objective_the_settings_it_declares(**bag):
    """``get(name, **bag)`` is the factory called with the settings it declares: equal values,
    or the same ValueError (an option value it does not allow) naming that option."""
    for name, factory in objectives.OBJECTIVES.items():
        own = {k: bag[k] for k in factory.option_names()}
        try:
            want = factory(**own)
        except ValueError as e:
            with pytest.raises(ValueError, match=re.escape(str(e))):
                objectives.get(name, **bag)
            assert any(str(e).startswith(k) for k in own), e
            continue
        got = objectives.get(name, **bag)
        assert got == want and hash(got) == hash(want) and got.options == own
    assert set(objectives.settings_names()) == set(bag)


def _expected(name, ev, traj, lz):
    """Each objective's value computed directly from the pure losses (the wiring under test)."""
    pf, pb, lr = jnp.sum(ev.log_pf, 1), jnp.sum(ev.log_pb, 1), traj.log_reward
    pi = jnp.sum(traj.log_pi, 1)
    if name == "tb":
        return losses.trajectory_balance(pf, pb, lr, lz)
    if name == "logvar":
        return losses.log_variance(pf, pb, lr)
    if name == "db":
        return losses.detailed_balance(ev.log_pf, ev.log_pb, losses.with_boundary_flows(
            ev.log_flow, lr, traj.lengths), traj.mask)
    if name == "subtb":
        return losses.subtrajectory_balance(ev.log_pf, ev.log_pb, losses.with_boundary_flows(
            ev.log_flow, lr, traj.lengths, lz), traj.mask, 0.9)
    if name == "reverse_kl":
        return div.reverse_kl(pf, pb, lr, baseline="loo", log_pi=pi)
    if name == "forward_kl":
        return div.forward_kl(pf, pb, lr, normalized=True, log_pi=pi)
    if name in ("renyi", "tsallis"):
        return getattr(div, name)(pf, pb, lr, alpha=0.5, control_variate="loo")
    if name == "alpha_kl":
        return 0.5 * div.alpha_kl(pf, pb, lr, alpha=0.0, control_variate="loo_mean") + \
            0.5 * div.forward_kl(pf, pb, lr, normalized=True)
    if name in ("wake_sleep", "reverse_wake_sleep"):
        return div.wake_sleep(pf, pb, lr, log_pi=pi)
    if name in ("soft_q", "munchausen", "pcl"):
        return _soft_rl_expected(name, ev, traj)
    return None


def _soft_rl_expected(name, ev, traj):
    """The RL-view losses transition by transition in numpy (``ev.log_flow`` the soft values
    V(s_t), no target network: the online values), default options."""
    pf, pb, v = (np.asarray(x, np.float64) for x in (ev.log_pf, ev.log_pb, ev.log_flow))
    lr, L = np.asarray(traj.log_reward, np.float64), np.asarray(traj.lengths)
    if name == "pcl":
        per = []
        for b in range(len(L)):
            V = list(v[b, :L[b]]) + [lr[b]]
            num = den = 0.0
            for i in range(L[b]):
                for j in range(i + 1, L[b] + 1):
                    d = V[i] - V[j] + sum(pf[b, t] - pb[b, t] for t in range(i, j))
                    num, den = num + 0.9 ** (j - i) * d ** 2, den + 0.9 ** (j - i)
            per.append(num / den)
        return np.mean(per)
    alpha = 0.15 if name == "munchausen" else 0.0
    te = 1.0 / (1.0 - alpha)
    res = []
    for b in range(len(L)):
        for t in range(L[b]):
            last = t == L[b] - 1
            y = pb[b, t] + (lr[b] if last else te * v[b, t + 1])
            y += alpha * max(te * pf[b, t], -20.0)
            res.append(te * (pf[b, t] + v[b, t]) - y)
    return np.mean(np.square(res))


@pytest.mark.parametrize("name", sorted(objectives.OBJECTIVES))
def test_objective_values_and_gradients(batch, name):
    """The value of every objective by name equals its formula on the evaluated trajectories, and
    its gradient is finite and not zero."""
    gfn0, params, traj = batch
    gfn = _gfn(name)
    val, g = jax.value_and_grad(gfn.traj_loss)(params, traj)
    ev = evaluate(ENV, gfn.policy, params, traj, soft_values=gfn.objective.soft_values)
    want = _expected(name, ev, traj, gfn.log_z(params))
    if want is not None:
        assert float(val) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    else:  # flow matching: a mean of squares, positive away from the solution
        assert float(val) > 0
    flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(g)])
    assert np.isfinite(flat).all() and np.abs(flat).max() > 0


def test_balance_objectives_unchanged(batch):
    gfn, params, traj = batch
    ev = evaluate(ENV, gfn.policy, params, traj)
    pf, pb = jnp.sum(ev.log_pf, 1), jnp.sum(ev.log_pb, 1)
    lz = gfn.log_z(params)
    want = losses.trajectory_balance(pf, pb, traj.log_reward, lz)
    assert float(gfn.traj_loss(params, traj)) == pytest.approx(float(want), rel=1e-6)
    want = losses.log_variance(pf, pb, traj.log_reward)
    assert float(_gfn("logvar").traj_loss(params, traj)) == pytest.approx(float(want), rel=1e-6)


def test_on_policy_importance_weights_are_one(batch):
    """Without exploration the behaviour log-probs equal log P_F: same gradient as log_pi=None."""
    _, params, traj = batch
    gfn = _gfn("reverse_kl", baseline="loo")

    def plain(p):
        ev = evaluate(ENV, gfn.policy, p, traj)
        return div.reverse_kl(jnp.sum(ev.log_pf, 1), jnp.sum(ev.log_pb, 1), traj.log_reward, "loo")

    g1 = ravel_pytree(jax.grad(gfn.traj_loss)(params, traj))[0]
    g2 = ravel_pytree(jax.grad(plain)(params))[0]
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_off_policy_uses_behaviour_log_probs():
    gfn = _gfn("reverse_kl", explore=Exploration(temperature=2.0, epsilon=0.2), baseline="none")
    params = gfn.init(jax.random.PRNGKey(0))
    traj = gfn.sample(params, jax.random.PRNGKey(3), 16, ENV.log_reward, explore=gfn.explore)
    assert not np.allclose(traj.log_pi, traj.log_pf)
    ev = evaluate(ENV, gfn.policy, params, traj)
    pf, pb = jnp.sum(ev.log_pf, 1), jnp.sum(ev.log_pb, 1)
    want = div.reverse_kl(pf, pb, traj.log_reward, "none", log_pi=jnp.sum(traj.log_pi, 1))
    assert float(gfn.traj_loss(params, traj)) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("name,kw,explore,bs,flag", [
    ("reverse_kl", dict(baseline="median"), None, None, "baseline 'median'"),
    ("renyi", dict(alpha=1.0), None, None, "alpha 1.0"),
    ("tsallis", dict(alpha=-0.5), None, None, "alpha -0.5"),
    ("tsallis", dict(alpha=float("nan")), None, None, "alpha"),
    ("renyi", dict(control_variate="global"), None, None, "control_variate 'global'"),
    ("alpha_kl", dict(alpha=1.5), None, None, "alpha 1.5"),
    ("alpha_kl", dict(control_variate="mean"), None, None, "control_variate 'mean'"),
    ("renyi", {}, Exploration(2.0, 0.0), None, "temperature"),
    ("alpha_kl", {}, Exploration(1.0, 0.1), None, "epsilon"),
    ("reverse_kl", dict(baseline="loo"), None, 1, "batch_size 1"),
    ("nope", {}, None, None, "unknown loss"),
])
def test_check_options_rejects(name, kw, explore, bs, flag):
    """Each factory validates its own options; check_sampling the behaviour and batch size."""
    with pytest.raises(ValueError) as e:
        objectives.get(name, **kw).check_sampling(explore, batch_size=bs)
    assert flag in str(e.value)
    assert "allowed" in str(e.value)


def test_check_options_accepts_valid():
    for b in objectives.BASELINES:
        objectives.reverse_kl(baseline=b).check_sampling(Exploration(2.0, 0.1), batch_size=4)
    for name in ("renyi", "tsallis"):
        for cv in objectives.control_variates(name):
            objectives.get(name, control_variate=cv, alpha=2.0).check_sampling()
    for cv in objectives.control_variates("alpha_kl"):
        objectives.alpha_kl(control_variate=cv, alpha=0.0).check_sampling()
    objectives.forward_kl(normalized=False).check_sampling(Exploration(1.0, 0.3))
    objectives.reverse_kl(baseline="none").check_sampling(batch_size=1)
    assert objectives.get("subtb", lam=0.5, alpha=3.0) == objectives.subtb(lam=0.5)


TINY = {"sets": ["--set-size", "5", "--k", "2"], "sequences": ["--length", "2", "--vocab", "3"],
        "hypergrid": ["--ndim", "2", "--height", "3", "--r0", "0.1"]}
COMMON = ["--steps", "2", "--log-every", "1", "--batch-size", "4", "--hidden", "8", "--quiet"]
# every divergence once from the CLI, each with its own flags where it has any (their values and
# gradients are checked exactly in test_objective_values_and_gradients; 4 devices in
# test_multidevice)
CASES = ([("sets", n, []) for n in ("reverse_wake_sleep", "wake_sleep")]
         + [("sequences", "reverse_kl", ["--baseline", "global"]),
            ("sequences", "renyi", ["--alpha", "2.0", "--control-variate", "none"]),
            ("hypergrid", "tsallis", []), ("hypergrid", "forward_kl", ["--unnormalized"]),
            ("sets", "alpha_kl", ["--control-variate", "loo_logmeanexp", "--alpha", "0.3"])])
assert {c[1] for c in CASES} == {o.name for o in DEFAULTS if not o.balance}


@pytest.mark.parametrize("task,loss,extra", CASES)
def test_cli_trains_every_objective(tmp_path, capsys, task, loss, extra):
    run = tmp_path / "r"
    cli.main(["train", task] + TINY[task] + ["--loss", loss] + extra + COMMON + ["--out", str(run)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1] == printed
    assert 0 <= rows[-1]["l1"] <= 2 and np.isfinite(rows[-1]["loss"])
    cfg = json.load(open(run / "config.json"))
    obj = objectives.get(loss, **{k: cfg[k] for k in ("lam", "baseline", "alpha", "control_variate")})
    assert ("log_z" in rows[-1]) == obj.needs_log_z  # absent where it does not apply
    assert cfg["task"] == task and cfg["loss"] == loss and cfg["steps"] == 2
    assert (run / "checkpoint" / "step_2").is_dir()


@pytest.mark.parametrize("args,msg", [
    (["--loss", "reverse_kl", "--baseline", "median"], "--baseline"),
    (["--loss", "renyi", "--alpha", "1"], "--alpha"),
    (["--loss", "tsallis", "--control-variate", "learned"], "--control-variate"),
    (["--loss", "renyi", "--temperature", "2"], "--temperature"),
    (["--loss", "kl"], "--loss"),
    (["--loss", "reverse_kl", "--batch-size", "1"], "--batch-size"),
    (["--k", "9"], "--k"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, args, msg):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "sets"] + TINY["sets"] + COMMON + args + ["--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_reverse_kl_training_lowers_l1():
    env = SetGeneration(5, 2, seed=1)
    module = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=32, uniform_pb=True)
    gfn = GFlowNet(env, module, objectives.reverse_kl(baseline="loo"))
    state, tx = init_state(gfn, OptimConfig(lr=3e-3), 0)
    table = metrics.transition_table(env)
    target = metrics.target_distribution(env, env.log_reward, None, table)

    def l1(p):
        return float(metrics.l1(metrics.terminal_distribution(env, gfn.policy, p, table), target))

    before = l1(state.sampler)
    state, _ = loop.make_chunk(make_step(gfn, tx, 32), 150)(state)
    after = l1(state.sampler)
    assert after < 0.5 * before, (before, after)
