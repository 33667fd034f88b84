"""Every run kind is reachable from the CLI, with flags from its declared settings, and bad input
is answered with one line naming the flag and exit status 2, nothing written."""
import subprocess
import sys

import pytest

GFNEM = [sys.executable, "-m", "gfnem_jax.cli"]


def _run(args):
    return subprocess.run(GFNEM + args, capture_output=True, text=True, timeout=300)


BAD_FLAGS = [
    ("grammar", "--steps", "0"), ("grammar", "--method", "magic"), ("grammar", "--nt", "0"),
    ("dvae", "--codes", "1"), ("dvae", "--method", "vae"), ("dvae", "--batch-size", "0"),
    ("ebm", "--method", "hmc"), ("ebm", "--bits", "0"), ("ebm", "--back-ratio", "2"),
    ("hypergrid", "--r0", "inf"), ("hypergrid", "--seed", "99999999999999999999"),
    ("mixture", "--epsilon", "1.5"), ("sets", "--k", "99"),
]
IN_A_PROCESS = {("grammar", "--steps"), ("hypergrid", "--r0")}  # the rest in this process (faster)


@pytest.mark.parametrize("kind,flag,value", BAD_FLAGS)
def test_bad_flag_one_line_exit_2_nothing_written(tmp_path, capsys, kind, flag, value):
    out = tmp_path / "run"
    args = ["train", kind, flag, value, "--out", str(out)]
    if (kind, flag) in IN_A_PROCESS:  # as a user runs it: no traceback reaches the terminal
        r = _run(args)
        code, err = r.returncode, r.stderr
    else:
        from gfnem_jax import cli
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        code, err = e.value.code, capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
    assert not out.exists()


def test_out_under_a_file_or_unwritable_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _run(["train", "hypergrid", "--steps", "2", "--out", str(f / "run")])
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_kind_has_help(capsys):
    from gfnem_jax import cli
    r = _run(["train", "hypergrid", "--help"])  # one as a user runs it, the rest in this process
    assert r.returncode == 0 and "--out" in r.stdout
    for kind in ("sets", "sequences", "mixture", "grammar", "dvae", "ebm"):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", kind, "--help"])
        assert e.value.code == 0 and "--out" in capsys.readouterr().out, kind
    for cmd in (["parse", "--help"], ["export-grammar", "--help"], ["eval", "dvae", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(cmd)
        assert e.value.code == 0 and "usage" in capsys.readouterr().out, cmd
