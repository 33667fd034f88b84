"""EB-GFN evaluation against exact answers, and a tiny end-to-end run writing the run files."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.envs.bits import Bits, all_binary
from gfnem_jax import ebgfn
from gfnem_jax.experiments import ebm, ebm_eval
from gfnem_jax.models import energy
from gfnem_jax.nets.mlp import MLPPolicy


def _policy(d, seed=0, scale=3.0):
    env = Bits(d)
    pol = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=16, n_layers=1)
    p = pol.init(jax.random.PRNGKey(seed), env.observe(env.init()))
    return env, pol, jax.tree.map(lambda a: scale * a, p)


def test_exact_sampler_probs_normalised_and_is_estimate_agrees():
    # a moderately random policy (IS with P_B as proposal is high-variance when P_B and P_F disagree)
    env, pol, p = _policy(3, scale=0.7)
    q = np.asarray(ebm_eval.exact_sampler_probs(env, pol, p))
    assert q.shape == (8,) and abs(q.sum() - 1) < 1e-5 and np.all(q > 0)
    lq = np.asarray(ebm_eval.is_sampler_log_probs(env, pol, p, jax.random.PRNGKey(1), n_paths=200, chunk=8))
    np.testing.assert_allclose(np.exp(lq), q, rtol=0.15, atol=5e-3)


def test_uniform_policy_gives_uniform_terminals():
    env = Bits(4)
    pol = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=8, n_layers=1)
    p = jax.tree.map(jnp.zeros_like, pol.init(jax.random.PRNGKey(0), env.observe(env.init())))
    q = np.asarray(ebm_eval.exact_sampler_probs(env, pol, p))
    np.testing.assert_allclose(q, 1 / 16, rtol=1e-5)
    lq = np.asarray(ebm_eval.is_sampler_log_probs(env, pol, p, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(lq, -math.log(16), atol=1e-5)  # ratio constant over paths: exact


def test_ais_log_z_matches_enumeration():
    model = energy.EnergyModel(6, hidden=16, n_layers=2)
    phi = jax.tree.map(lambda a: 2.0 * a, model.init(jax.random.PRNGKey(0)))
    exact = float(energy.log_partition(model, phi))
    lz, se = ebm_eval.ais_log_z(model.energy, phi, jax.random.PRNGKey(1), 6, n_chains=128, n_temps=200)
    assert abs(lz - exact) < 4 * se + 0.03, (lz, exact, se)
    x = all_binary(6)[:5]
    nll, _ = ebm_eval.ais_nll(model, phi, x, jax.random.PRNGKey(1), 128, 200)
    assert abs(nll - float(energy.exact_nll(model, phi, x))) < 4 * se + 0.03


def test_mmd_matches_bruteforce_and_separates():
    r = np.random.default_rng(0)
    x = (r.random((30, 8)) < 0.3).astype(np.uint8)
    y = (r.random((40, 8)) < 0.7).astype(np.uint8)
    K = lambda a, b: np.exp(-np.abs(a[:, None].astype(int) - b[None]).sum(-1) / (8 * 0.1))
    kxx, kyy = K(x, x), K(y, y)
    ref = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (40 * 39)
           - 2 * K(x, y).mean())
    np.testing.assert_allclose(ebm_eval.mmd(x, y), ref, rtol=1e-5)
    x2 = (r.random((30, 8)) < 0.3).astype(np.uint8)
    assert abs(ebm_eval.mmd(x, x2)) < 0.2 * ebm_eval.mmd(x, y)


def test_sampler_tv_exact_for_small_d():
    s = ebm.EBMSettings(bits=2, energy_hidden=8, gfn_hidden=8)
    model_ebm = ebgfn.make(s, 4)
    st = ebgfn.init_state(model_ebm, 0)
    tv, how = ebm_eval.sampler_tv(model_ebm, st.sampler, st.model, jax.random.PRNGKey(0))
    q = np.asarray(ebm_eval.exact_sampler_probs(model_ebm.env, model_ebm.policy, st.sampler))
    p = np.exp(np.asarray(energy.log_probs(model_ebm.model, st.model)))
    assert how == "exact" and abs(tv - 0.5 * np.abs(q - p).sum()) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gfn-cd", "gwg"])
def test_run_writes_files(tmp_path, method):
    s = ebm.EBMSettings(data="moons", bits=2, n_train=500, n_test=50, method=method, steps=4,
                        log_every=2, batch_size=8, energy_hidden=8, gfn_hidden=8, mcmc_steps=2, k=2,
                        n_eval_samples=64)
    out = str(tmp_path / method)
    summary = ebm.run(s, out, progress=False)
    e = np.load(os.path.join(out, "energies.npy"))
    t = np.load(os.path.join(out, "test.npy"))
    assert e.dtype == np.float32 and e.shape == (16,)
    assert t.dtype == np.uint8 and t.shape == (50, 4)
    saved = json.load(open(os.path.join(out, "summary.json")))
    lp = -e - np.logaddexp.reduce(-e.astype(np.float64))
    np.testing.assert_allclose(saved["test_nll"], -lp[(t.astype(int) * [8, 4, 2, 1]).sum(1)].mean(), rtol=1e-4)
    assert (saved["sampler_tv"] is None) == (method == "gwg")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4] and all(math.isfinite(r["test_nll"]) for r in rows)
    assert json.load(open(os.path.join(out, "config.json")))["method"] == method
    assert os.path.exists(os.path.join(out, "heatmaps.png")) and summary["test_nll"] == saved["test_nll"]
    x = ebm.sample(out, 10, seed=0)
    assert x.shape == (10, 4) and x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
    # resume: continue the run to 6 steps from its checkpoint
    ebm.run(s.replace(steps=6), out, progress=False, resume=True)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_settings_errors_name_the_setting():
    with pytest.raises(ValueError, match="method must be one of"):
        ebm.EBMSettings(method="vae").validate()
    with pytest.raises(ValueError, match="back_ratio must be"):
        ebm.EBMSettings(method="gfn", back_ratio=1.0).validate()
    with pytest.raises(ValueError, match="data must be one of"):
        ebm.load_data(ebm.EBMSettings(data="banana"))


def test_exact_samples_follow_p_phi_by_cdf_inversion():
    """sample_exact draws from the enumerated p_phi (TV of 40,000 draws over the 16 states of
    d = 4, against the exact probabilities) without holding an [n, 2^d] array."""
    model = energy.EnergyModel(4, hidden=8, n_layers=1)
    phi = model.init(jax.random.PRNGKey(3))
    p = np.exp(np.asarray(energy.log_probs(model, phi), np.float64))
    x = ebm_eval.sample_exact(model, phi, jax.random.PRNGKey(4), 40000)
    idx = (x.astype(np.int64) << np.arange(3, -1, -1)).sum(1)
    q = np.bincount(idx, minlength=16) / len(idx)
    assert 0.5 * np.abs(q - p / p.sum()).sum() < 0.02
    assert x.dtype == np.uint8 and x.shape == (40000, 4)


def test_eval_recomputes_the_runs_held_out_nll(tmp_path, capsys):
    """gfnem eval ebm: the exact test NLL of the run's checkpoint on its test.npy, equal to the
    last logged row's, also in RUN/eval.json."""
    from gfnem_jax import cli
    out = str(tmp_path / "run")
    cli.main(["train", "ebm", "--method", "pcd", "--data", "moons", "--bits", "2", "--n-train",
              "200", "--n-test", "40", "--steps", "4", "--log-every", "2", "--batch-size", "8",
              "--energy-hidden", "8", "--mcmc-steps", "2", "--n-eval-samples", "64", "--out", out,
              "--quiet"])
    capsys.readouterr()
    cli.main(["eval", "ebm", "--run", out])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert res["exact"] and res["n_test"] == 40 and res["d"] == 4
    np.testing.assert_allclose(res["test_nll"], last["test_nll"], rtol=1e-6)
    with open(os.path.join(out, "eval.json")) as f:
        assert json.load(f)["test_nll"] == res["test_nll"]
    # gfnem sample streams its .npy chunk by chunk: the numbers of ebm.sample in memory
    n = ebm.SAMPLE_CHUNK + 100
    cli.main(["sample", "--run", out, "--n", str(n), "--seed", "3", "--out", str(tmp_path / "x.npy")])
    streamed = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(streamed, ebm.sample(out, n, seed=3))
    assert streamed.shape == (n, 4) and streamed.dtype == np.uint8
