"""Every run kind is reachable from the CLI, with flags from its declared settings, and bad input
is answered with one line naming the flag and exit status 2, nothing written."""
import subprocess
import sys

import pytest

GFNEM = [sys.executable, "-m", "gfnem_jax.cli"]


def _run(args):
    return subprocess.run(GFNEM + args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind,flag,value", [
    ("grammar", "--steps", "0"), ("grammar", "--method", "magic"), ("grammar", "--nt", "0"),
    ("dvae", "--codes", "1"), ("dvae", "--method", "vae"), ("dvae", "--batch-size", "0"),
    ("ebm", "--method", "hmc"), ("ebm", "--bits", "0"), ("ebm", "--back-ratio", "2"),
    ("hypergrid", "--r0", "inf"), ("hypergrid", "--seed", "99999999999999999999"),
    ("mixture", "--epsilon", "1.5"), ("sets", "--k", "99"),
])
def test_bad_flag_one_line_exit_2_nothing_written(tmp_path, kind, flag, value):
    out = tmp_path / "run"
    r = _run(["train", kind, flag, value, "--out", str(out)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
    assert not out.exists()


def test_out_under_a_file_or_unwritable_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _run(["train", "hypergrid", "--steps", "2", "--out", str(f / "run")])
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_kind_has_help():
    for kind in ("hypergrid", "sets", "sequences", "mixture", "grammar", "dvae", "ebm"):
        r = _run(["train", kind, "--help"])
        assert r.returncode == 0 and "--out" in r.stdout
    for cmd in (["parse", "--help"], ["export-grammar", "--help"], ["eval", "dvae", "--help"]):
        assert _run(cmd).returncode == 0
