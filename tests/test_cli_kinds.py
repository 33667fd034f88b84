"""Every run kind is reachable from the CLI, with flags from its declared settings, and bad input
is answered with one line naming the flag and exit status 2, nothing written."""
import json
import os
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


def test_command_table_in_help_and_docs_agree():
    from gfnem_jax import cli
    table = cli.command_table()
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "commands.rst")) as f:
        docs = "\n".join(line[3:] for line in f.read().splitlines() if line.startswith("   "))
    assert table in docs
    assert table in cli.build_parser().format_help()


@pytest.mark.parametrize("argv,kind,takes", [
    (["parse", "--corpus", "c.txt", "--out", "p.jsonl"], "hypergrid", "gfnem parse takes grammar"),
    (["export-grammar", "--out", "g.npz"], "mixture", "gfnem export-grammar takes grammar"),
    (["eval", "dvae"], "mixture", "gfnem eval dvae takes dvae"),
    (["sample", "--out", "x.npy"], "mixture", "gfnem sample takes runs of hypergrid"),
])
def test_a_command_given_another_kinds_run_names_what_applies(tmp_path, capsys, argv, kind, takes):
    """Run folders of one kind given to another kind's command: one line, exit 2."""
    from gfnem_jax import cli
    from gfnem_jax.experiments import mixture, runner
    run = tmp_path / "run"
    run.mkdir()
    cfg = (runner.config_dict("hypergrid", *runner.settings_of({"task": "hypergrid"})[1:])
           if kind == "hypergrid" else mixture.MixtureSettings().to_config())
    (run / "config.json").write_text(json.dumps(cfg))
    out = [a if not a.endswith((".txt", ".jsonl", ".npz", ".npy")) else str(tmp_path / a)
           for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.main(out + ["--run", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f"a {kind} run" in err[0], err
    assert takes in err[0], err
