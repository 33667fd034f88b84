"""Tests of the hierarchical mixture model, its baselines and the `gfnem train mixture` run."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _o2 import o2_env

from gfnem_jax.experiments.mixture_baselines import run_exact_em, run_mean_field_em
from gfnem_jax.models.mixture import GENERATING_MEANS, HierarchicalMixture, generate_data

MODEL = HierarchicalMixture()
THETA = jnp.asarray([[-1.2, -1.5], [1.0, 1.6], [0.2, -1.0], [-1.9, 1.1]], jnp.float32)


def test_structure_and_density():
    o = np.asarray(MODEL.petal_offsets())
    np.testing.assert_allclose(np.linalg.norm(o, axis=1), 1.0, rtol=1e-6)
    ang = np.mod(np.arctan2(o[:, 1], o[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(ang, (np.arange(4) + 0.5) * np.pi / 2, rtol=1e-6)
    x = jnp.asarray([0.3, -0.7])
    z = jnp.asarray([2, 1])
    m = np.asarray(THETA[2]) + o[1]
    ref = math.log(1 / 16) - math.log(2 * math.pi * 0.25 ** 2) - np.sum((np.asarray(x) - m) ** 2) / (2 * 0.0625)
    assert abs(float(MODEL.log_joint(THETA, x, z)) - ref) < 1e-4
    # p(x) integrates to 1 (true densities, no dropped constant): Riemann sum on a fine grid
    g = np.linspace(-5, 5, 401, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], 1))
    mass = float(jnp.sum(jnp.exp(MODEL.log_marginal(THETA, pts)))) * (g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 1e-3


def test_posterior_table_and_data():
    x, z = generate_data(MODEL, 5, 300)
    assert x.shape == (300, 2) and x.dtype == np.float32 and z.shape == (300, 2)
    x2, _ = generate_data(MODEL, 5, 300)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, generate_data(MODEL, 6, 300)[0])
    xj = jnp.asarray(x[:20])
    post = MODEL.exact_posterior(THETA, xj)
    Z = MODEL.all_latents()
    lj = jax.vmap(lambda xi: jax.vmap(lambda zz: MODEL.log_joint(THETA, xi, zz))(Z))(xj)
    np.testing.assert_allclose(post, jax.nn.softmax(lj, -1), atol=1e-6)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=1e-5)
    # the generating means fit the data better than a wrong theta
    gen = jnp.asarray(GENERATING_MEANS, jnp.float32)
    assert float(MODEL.loglik(gen, jnp.asarray(x))) > float(MODEL.loglik(THETA, jnp.asarray(x))) + 1


def test_exact_em_gradient_path_reaches_closed_form_fixed_point():
    x = jnp.asarray(generate_data(MODEL, 1, 800)[0])
    theta0 = MODEL.init_means(jax.random.PRNGKey(4), x)
    res = run_exact_em(MODEL, x, theta0, 300, 0.1)
    ll = np.asarray(res.loglik)
    assert np.all(np.diff(ll) > -1e-5), "EM never decreases the log-likelihood"
    th = res.theta
    closed = MODEL.closed_form_m_step(x, MODEL.exact_posterior(th, x))
    np.testing.assert_allclose(closed, th, atol=1e-4)


def test_mean_field_elbo_bounds_and_ascent():
    x = jnp.asarray(generate_data(MODEL, 2, 300)[0])
    qc = jnp.full((300, 4), 0.25)
    qp = jnp.full((300, 4), 0.25)
    elbos = []
    for _ in range(4):
        qc, qp = MODEL.mean_field(THETA, x, qc, qp, 1)
        elbos.append(float(MODEL.elbo_mean_field(THETA, x, qc, qp)))
    assert np.all(np.diff(elbos) >= -1e-5)
    assert elbos[-1] <= float(MODEL.loglik(THETA, x)) + 1e-5
    res = run_mean_field_em(MODEL, x, THETA, 50, 0.1, 3)
    assert np.isfinite(np.asarray(res.loglik)).all()


SMALL = ["--n-data", "400", "--steps", "120", "--e-steps", "10", "--em-iters", "40",
         "--log-every", "60", "--batch-size", "32", "--hidden", "32", "--quiet"]


def _cli(argv):
    from gfnem_jax import cli
    cli.main(["train", "mixture"] + argv)


def test_cli_run_is_reproducible(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    extra = ["--sleep-prob", "0.3", "--ls-rounds", "2", "--seed", "1"]
    _cli(["--out", a] + SMALL + extra)
    _cli(["--out", b, "--no-plot"] + SMALL + extra)
    with open(os.path.join(a, "summary.json"), "rb") as f:
        sa = f.read()
    with open(os.path.join(b, "summary.json"), "rb") as f:
        assert f.read() == sa
    pa, pb = np.load(os.path.join(a, "params.npz")), np.load(os.path.join(b, "params.npz"))
    assert sorted(pa.files) == sorted(pb.files) and len(pa.files) > 5
    for k in pa.files:
        np.testing.assert_array_equal(pa[k], pb[k])
    s = json.loads(sa)
    assert set(s["loglik"]) == {"gflownet_em", "exact_em", "mean_field_em", "generating"}
    assert np.asarray(s["means"]["exact_em"]).shape == (4, 2)
    data = np.load(os.path.join(a, "data.npy"))
    assert data.shape == (400, 2) and data.dtype.kind == "f"
    rows = [json.loads(l) for l in open(os.path.join(a, "metrics.jsonl"))]
    g = [r for r in rows if r["method"] == "gflownet_em"]
    assert len(g) == 120 and all({"loglik", "loss", "m_step"} <= set(r) for r in g)
    assert sum(r["m_step"] for r in g) == 120 // 11 + (1 if 120 % 11 > 10 else 0)
    assert os.path.getsize(os.path.join(a, "mixture.png")) > 1000


@pytest.mark.parametrize("flag,value", [("--schedule", "sometimes"), ("--ls-back", "3"),
                                        ("--sleep-prob", "2"), ("--loss", "db"), ("--n-data", "3")])
def test_cli_rejects_bad_flags_before_writing(tmp_path, capsys, flag, value):
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        _cli(["--out", out, flag, value])
    assert e.value.code == 2
    assert not os.path.exists(out)
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("schedule,extra", [
    # the fixed schedule's default run (66 s on 2 cores) runs with -m slow; CI keeps the adaptive one
    pytest.param("fixed", [], marks=pytest.mark.slow),
    # the default adaptive run, cut at step 3500 of its 12000 (the same threshold schedule): it has
    # converged there (measured, seed 0: GFlowNet-EM - exact EM 9e-5 nats and posterior TV 0.006
    # at step 3000, 5e-5 and 0.003 at step 4000). CI checks this same run, with the same bounds,
    # through notebooks/mixture_em.ipynb (tests/test_notebooks.py); the CLI path runs with -m slow
    pytest.param("adaptive", ["--steps", "3500", "--threshold-steps", "12000"],
                 marks=pytest.mark.slow)])
def test_default_run_matches_exact_em(tmp_path, capsys, schedule, extra):
    """The issue's claim, end to end with the CLI defaults (either schedule): GFlowNet-EM within
    0.01 nats of exact EM from the same initialization, its posterior within TV 0.02 of the exact one."""
    out = str(tmp_path / "run")
    # a subprocess at XLA's default optimisation: 12,000 steps cost more to run than to compile
    r = subprocess.run([sys.executable, "-m", "gfnem_jax.cli", "train", "mixture", "--out", out,
                        "--seed", "0", "--no-plot", "--quiet", "--schedule", schedule] + extra,
                       capture_output=True, text=True, env=o2_env())
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.load(open(os.path.join(out, "summary.json")))
    ll = s["loglik"]
    assert abs(ll["gflownet_em"] - ll["exact_em"]) < 0.01
    assert ll["exact_em"] >= ll["generating"] - 0.01  # a maximum-likelihood fit, not worse than the truth
    assert ll["mean_field_em"] < ll["exact_em"]
    assert s["posterior_tv_gflownet"] < 0.02
    assert np.load(os.path.join(out, "data.npy")).shape == (4000, 2)
