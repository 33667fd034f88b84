"""Sizes checked before work (``gfnem_jax.sizes``): an impossible batch or --n is refused in one
line with its estimate and nothing written; ``gfnem sample`` streams its .npy chunk by chunk with
the numbers of the in-memory path; README-sized settings are never refused."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gfnem_jax import experiments, sizes
from gfnem_jax.experiments import runner

GFNEM = [sys.executable, "-m", "gfnem_jax.cli"]
SMALL = ["train", "hypergrid", "--ndim", "2", "--height", "4", "--r0", "0.1", "--steps", "20",
         "--batch-size", "16", "--log-every", "10", "--hidden", "32", "--quiet"]


def _run(args):
    return subprocess.run(GFNEM + args, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "a")
    r = _run(SMALL + ["--out", out])
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("kind,flags", [
    ("hypergrid", ["--batch-size", "100000000000"]),
    ("sets", ["--batch-size", "100000000000"]),
    ("ebm", ["--batch-size", "100000000000"]),
    ("grammar", ["--batch-size", "100000000000"]),
])
def test_impossible_batch_refused_in_one_line_nothing_written(tmp_path, kind, flags):
    out = tmp_path / "run"
    r = _run(["train", kind, *flags, "--steps", "10", "--out", str(out), "--quiet"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.match(r"gfnem: error: --batch-size 100000000000: needs at least [0-9.]+ [TP]B of "
                    r"memory \(.*\), more than the [0-9.]+ [kMGT]?B available; use a smaller "
                    r"--batch-size$", lines[0]), lines[0]
    assert not out.exists()


def test_impossible_n_refused_before_sampling(small_run, tmp_path):
    out = tmp_path / "x.npy"
    r = _run(["sample", "--run", small_run, "--n", "100000000000000", "--out", str(out)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gfnem: error: --n 100000000000000: the output needs 1.6 PB "
                               "of disk"), lines[0]
    assert not out.exists() and os.listdir(tmp_path) == []


def test_disk_check_counts_rows_and_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"^n 1000: the output needs .* \(1000 samples x 2 x 8 B\)"):
        sizes.check_sample_disk(1000, (2,), np.int64, str(tmp_path / "x.npy"), free=1000)
    sizes.check_sample_disk(1000, (2,), np.int64, str(tmp_path / "x.npy"), free=10 ** 6)


def test_streamed_sample_equals_in_memory(small_run, tmp_path):
    """The CLI's streamed .npy == the in-memory sample, and both chunkings agree."""
    out = tmp_path / "x.npy"
    n = 2500
    r = _run(["sample", "--run", small_run, "--n", str(n), "--seed", "4", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    ref = runner.sample(small_run, n, 4)  # in memory
    assert x.dtype == ref.dtype == np.int64
    np.testing.assert_array_equal(x, ref)
    _, env, gfn, params = runner.load_run(small_run)
    for chunk in (300, 1024):  # streamed into an .npy memmap with other chunkings
        path = str(tmp_path / f"c{chunk}.npy")
        opened = []

        def open_out(shape, dtype):
            opened.append((shape, dtype))
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=shape)

        y = runner.sample_terminals(env, gfn, params, n, 4, chunk=chunk, out=open_out)
        y.flush()
        assert opened[0][0] == (n, 2)
        np.testing.assert_array_equal(np.load(path), ref)


def _readme_settings():
    """Settings of the README's commands (and every kind's defaults)."""
    k = experiments.kind
    yield "hypergrid", k("hypergrid").Settings(ndim=2, height=8, r0=0.001, batch_size=64)
    yield "sets", k("sets").Settings(loss="reverse_kl")
    yield "sequences", k("sequences").Settings(loss="renyi")
    yield "hypergrid", k("hypergrid").Settings(loss="fm")
    yield "mixture", k("mixture").Settings()
    yield "grammar", k("grammar").Settings()
    yield "grammar", k("grammar").Settings(method="gflownet", max_len=10, nt=10, pt=20, dim=64,
                                           policy_layers=2, policy_dim=64, policy_enc_layers=1)
    yield "grammar", k("grammar").Settings(method="gflownet")  # the paper's size
    yield "dvae", k("dvae").Settings(method="gflownet", codes=8, data="digits")
    yield "ebm", k("ebm").Settings(data="2spirals", bits=4, energy_hidden=64, gfn_hidden=64)
    yield "ebm", k("ebm").Settings(method="pcd", data="moons")
    yield "ebm", k("ebm").Settings()


@pytest.mark.parametrize("kind,s", list(_readme_settings()))
def test_readme_settings_not_refused(kind, s):
    """Their lower bounds are far below any machine that runs the suite (1 GB), so refusing
    them would mean an estimate gone wrong."""
    mod = experiments.kind(kind)
    est = sizes.train_estimate(mod, s)
    assert est is not None
    assert est[1] < 1e9, est
    sizes.check_train(mod, s, available=10 ** 9)


def test_estimate_names_the_setting_and_scales():
    mod = experiments.kind("hypergrid")
    s = mod.Settings(batch_size=100_000)
    setting, need, detail = sizes.train_estimate(mod, s)
    assert setting == "batch_size 100000" and "trajectories" in detail
    with pytest.raises(ValueError, match=r"^batch_size 100000: needs at least .* more than the "
                                         r"1.0 kB available; use a smaller batch_size$"):
        sizes.check_train(mod, s, available=1000)
    s2 = mod.Settings(batch_size=200_000)
    assert sizes.train_estimate(mod, s2)[1] > need


def test_available_memory_and_disk_are_positive(tmp_path):
    assert 0 < sizes.host_memory() and 0 < sizes.available_memory()
    assert sizes.free_disk(str(tmp_path / "missing" / "x.npy")) > 0
