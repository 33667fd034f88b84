"""A tiny dvae run end to end: files, resume, evaluate_run, settings errors, the CLI, one scan."""
import json
import os

import numpy as np
import pytest

from gfnem_jax.experiments import dvae

TINY = dict(codes=3, grid=2, steps=4, e_steps=2, m_steps=2, batch_size=8, channels=4, embed_dim=4,
            hidden=16, log_every=2, n_test=6)


def test_settings_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        dvae.DVAESettings(method="nope").validate()
    with pytest.raises(ValueError, match="codes must be >= 2"):
        dvae.DVAESettings(codes=1).validate()
    with pytest.raises(ValueError, match="prior must be uniform for method vqvae"):
        dvae.DVAESettings(method="vqvae", prior="learned").validate()
    with pytest.raises(ValueError, match="grid must be in"):
        dvae.load_data(dvae.DVAESettings(grid=9))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gflownet", "vqvae"])
def test_tiny_run_resume_eval(tmp_path, method):
    out = str(tmp_path / method)
    kw = dict(TINY, method=method, prior="learned" if method == "gflownet" else "uniform",
              steps=2)
    dvae.run(dvae.DVAESettings(**kw), out, progress=False)
    res = dvae.run(dvae.DVAESettings(**dict(kw, steps=4)), out, progress=False, resume=True)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4]
    assert res["state"].step == 4
    for name in ("config.json", "summary.json", "reconstructions.png", "prior_samples.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    summ = json.load(open(os.path.join(out, "summary.json")))
    assert summ["codes_used"] == (summ["test_bound"] < summ["no_latent_bound"] - 1.0)
    e = dvae.evaluate_run(out, is_samples=7, per_image=True)
    assert len(e["per_image_nll"]) == 6 and np.mean(e["per_image_nll"]) == pytest.approx(e["nll"])
    saved = json.load(open(os.path.join(out, "eval.json")))
    assert "per_image_nll" not in saved
    assert saved["nll"] == pytest.approx(e["nll"])
    assert {"nll", "is_samples", "n_images", "codes", "method"} <= set(saved)
    assert saved["n_images"] == 6 and saved["codes"] == 3 and saved["method"] == method
    assert np.isfinite(saved["nll"]) and saved["nll"] > 0
    if method == "vqvae":  # bound >= 16 log K part alone
        assert saved["nll"] > 4 * np.log(3)
    with pytest.raises(ValueError, match="resume: settings differ"):
        dvae.run(dvae.DVAESettings(**dict(kw, steps=6, codes=4)), out, progress=False, resume=True)


@pytest.mark.slow
def test_cli_train_and_eval(tmp_path, capsys):
    from gfnem_jax import cli
    out = str(tmp_path / "r")
    cli.main(["train", "dvae", "--method", "factorized", "--codes", "3", "--grid", "2",
              "--steps", "2", "--e-steps", "1", "--m-steps", "1", "--batch-size", "8",
              "--channels", "4", "--embed-dim", "4", "--hidden", "16", "--n-test", "4",
              "--no-plot", "--out", out, "--quiet"])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 2 and np.isfinite(final["test_bound"])
    assert json.load(open(os.path.join(out, "summary.json")))["method"] == "factorized"
    cli.main(["eval", "dvae", "--run", out, "--is-samples", "5"])
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["method"] == "factorized" and d["is_samples"] == 5 and d["n_images"] == 4
    assert json.load(open(os.path.join(out, "eval.json")))["nll"] == d["nll"]


@pytest.mark.parametrize("method", ["gflownet", "greedy"])
def test_one_scan_equals_one_program_per_phase(method):
    """The E/M alternation inside the step, n steps in one lax.scan (accelerators), gives the
    per-phase programs' run (XLA:CPU) to float rounding: same keys, same schedule, same sleep."""
    import jax
    import jax.numpy as jnp
    s = dvae.DVAESettings(**dict(TINY, method=method, steps=6, e_steps=2, m_steps=1,
                                 sleep_prob=0.5, prior="learned"))
    train, _ = dvae.load_data(s)
    x = jnp.asarray(train)
    runs = []
    for scan in (False, True):
        b = dvae.Built(s, train.shape[1:], x[0], scan=scan)
        assert len(b.steps) == (1 if scan else 2)
        st, ms = b.state, []
        run_chunk = b.make_chunk(1, len(train))
        for _ in range(6):
            st, m = run_chunk(st, x)
            ms.append(dvae._summarize(jax.device_get(m)))
        runs.append((st, ms))
    (s0, m0), (s1, m1) = runs
    assert [sorted(r) for r in m0] == [sorted(r) for r in m1]
    assert [r.get("sleep") for r in m0] == [r.get("sleep") for r in m1]
    assert int(s1.step) == 6
    for a, b in zip(m0, m1):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_independent_pixels_nll_closed_form():
    """The no-latent reference: -log prod_j p_j^x_j (1 - p_j)^(1 - x_j) with p_j the add-one
    smoothed training frequency of pixel j, checked against the formula image by image."""
    from gfnem_jax.experiments import dvae_eval
    rng = np.random.default_rng(0)
    train = (rng.random((9, 3, 2)) < 0.3).astype(np.float32)
    test = (rng.random((4, 3, 2)) < 0.5).astype(np.float32)
    p = (train.reshape(9, -1).astype(np.float64).sum(0) + 1) / 11
    want = [-sum(np.log(p[j]) if x[j] else np.log(1 - p[j]) for j in range(6))
            for x in test.reshape(4, -1)]
    np.testing.assert_allclose(dvae_eval.independent_pixels_nll(train, test), want, rtol=1e-12)

