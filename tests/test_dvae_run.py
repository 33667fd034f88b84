"""A tiny dvae run end to end: files, resume, evaluate_run, settings errors, CLI glue."""
import argparse
import json
import os

import numpy as np
import pytest

from gfnem_jax.experiments import dvae, dvae_cli

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
    e = dvae.evaluate_run(out, is_samples=7)
    saved = json.load(open(os.path.join(out, "eval.json")))
    assert saved["nll"] == pytest.approx(e["nll"])
    assert {"nll", "is_samples", "n_images", "codes", "method"} <= set(saved)
    assert saved["n_images"] == 6 and saved["codes"] == 3 and saved["method"] == method
    assert np.isfinite(saved["nll"]) and saved["nll"] > 0
    if method == "vqvae":  # bound >= 16 log K part alone
        assert saved["nll"] > 4 * np.log(3)
    with pytest.raises(ValueError, match="resume: settings differ"):
        dvae.run(dvae.DVAESettings(**dict(kw, steps=6, codes=4)), out, progress=False, resume=True)


@pytest.mark.slow
def test_cli_glue(tmp_path, capsys):
    p = argparse.ArgumentParser()
    dvae_cli.add_train_args(p)
    args = p.parse_args(["--method", "factorized", "--codes", "3", "--grid", "2", "--steps", "2",
                         "--e-steps", "1", "--m-steps", "1", "--batch-size", "8", "--channels", "4",
                         "--embed-dim", "4", "--hidden", "16", "--n-test", "4", "--no-plot",
                         "--out", str(tmp_path / "r"), "--quiet"])
    assert dvae_cli.train_main(args) == 0
    pe = argparse.ArgumentParser()
    dvae_cli.add_eval_args(pe)
    assert dvae_cli.eval_main(pe.parse_args(["--run", str(tmp_path / "r"), "--is-samples", "5"])) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    d = json.loads(line)
    assert d["method"] == "factorized" and d["is_samples"] == 5 and d["n_images"] == 4
