"""Several processes (jax.distributed over loopback, gloo collectives on CPU): the same run as one
process with as many devices, to float tolerance; only process 0 writes the run files."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from _o2 import device_flags


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices=1):
    env = dict(os.environ, GFNEM_NO_COMPILE_CACHE="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = device_flags(devices)
    return env


def _cli(args):
    return [sys.executable, "-m", "gfnem_jax.cli"] + args


def run_processes(args, out, n=2, devices=1):
    """Start n processes (``devices`` CPU devices each) of `gfnem <args> --out OUT`; return their
    (returncode, stdout, stderr)."""
    port = _port()
    procs = [subprocess.Popen(_cli(args + ["--out", str(out), "--num-processes", str(n),
                                           "--process-id", str(i), "--coordinator",
                                           f"127.0.0.1:{port}"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(devices))
             for i in range(n)]
    return [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]


def rows(out):
    return [{k: v for k, v in json.loads(l).items() if k != "wall_s"}
            for l in open(os.path.join(out, "metrics.jsonl"))]


def final_params(out):
    """The final parameters as a list of arrays, read back in this (single-device) process."""
    import jax
    kind = json.load(open(os.path.join(out, "config.json"))).get("task")
    if kind == "hypergrid":
        from gfnem_jax.experiments import runner
        tree = runner.load_run(str(out))[3]
    elif os.path.isfile(os.path.join(out, "params.npz")):  # mixture
        z = np.load(os.path.join(out, "params.npz"))
        tree = [z[k] for k in sorted(z.files)]
    else:
        from gfnem_jax.experiments import grammar
        st = grammar.load_state(str(out))[2]
        tree = (st.sampler, st.model)
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            _same(list(x.values()), list(y.values()), rtol, atol)
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=rtol, abs=atol)
        elif isinstance(x, np.ndarray):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
        else:
            assert x == y


# reverse KL with a leave-one-out baseline: a batch statistic, taken over the global batch
HG = ["train", "hypergrid", "--ndim", "2", "--height", "4", "--loss", "reverse_kl", "--baseline",
      "loo", "--steps", "40", "--batch-size", "16", "--log-every", "20", "--checkpoint-every", "20",
      "--quiet", "--seed", "3"]


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    res = run_processes(HG, tmp_path / "multi", devices=2)
    for rc, _, err in res:
        assert rc == 0, err[-3000:]
    again = run_processes(HG, tmp_path / "again", devices=2)
    assert all(rc == 0 for rc, _, _ in again)
    one = subprocess.run(_cli(HG + ["--out", str(tmp_path / "one"), "--devices", "4"]),
                         capture_output=True, text=True, env=_env(4))
    assert one.returncode == 0, one.stderr[-3000:]
    assert [r["step"] for r in rows(tmp_path / "multi")] == [20, 40]
    _same(rows(tmp_path / "multi"), rows(tmp_path / "one"))
    _same(final_params(tmp_path / "multi"), final_params(tmp_path / "one"))
    # the same 2-process run again: bitwise
    assert rows(tmp_path / "again") == rows(tmp_path / "multi")
    for a, b in zip(final_params(tmp_path / "again"), final_params(tmp_path / "multi")):
        assert np.array_equal(a, b)
    cfg = json.load(open(tmp_path / "multi" / "config.json"))
    assert cfg["devices"] == 4  # defaults to every device of every process
    # both processes end with the same final row (replicated state)
    last = [json.loads(r[1].strip().splitlines()[-1]) for r in res]
    strip = lambda x: {k: v for k, v in x.items() if k != "wall_s"}  # noqa: E731
    assert strip(last[0]) == strip(last[1])


def test_bad_process_flags_are_one_line_errors(tmp_path):
    for extra, word in ((["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id"),
                        (["--num-processes", "2", "--process-id", "0", "--coordinator", "nohost"], "--coordinator"),
                        (["--num-processes", "0", "--process-id", "0", "--coordinator", "h:1"], "--num-processes")):
        r = subprocess.run(_cli(HG + ["--out", str(tmp_path / "x")] + extra), capture_output=True,
                           text=True, env=_env())
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and word in r.stderr, r.stderr
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mixture", "grammar"])
def test_em_runs_over_two_processes(tmp_path, kind):
    if kind == "mixture":
        args = ["train", "mixture", "--n-data", "400", "--steps", "40", "--batch-size", "32",
                "--m-batch-size", "64", "--em-iters", "10", "--log-every", "20", "--quiet", "--no-plot"]
    else:
        args = ["train", "grammar", "--method", "gflownet", "--steps", "20", "--log-every", "10",
                "--batch-size", "8", "--policy-layers", "1", "--policy-dim", "32", "--policy-heads",
                "2", "--policy-enc-layers", "1", "--nt", "3", "--pt", "4", "--dim", "16",
                "--max-len", "6", "--synth-train", "40", "--synth-valid", "10", "--synth-nt", "2",
                "--synth-pt", "3", "--synth-vocab", "8", "--threshold-start", "100",
                "--eval-samples", "2", "--quiet"]
    for rc, _, err in run_processes(args, tmp_path / "multi", devices=2):
        assert rc == 0, err[-3000:]
    one = subprocess.run(_cli(args + ["--out", str(tmp_path / "one"), "--devices", "4"]),
                         capture_output=True, text=True, env=_env(4))
    assert one.returncode == 0, one.stderr[-3000:]
    # float tolerance: a different device layout sums in a different order, and 40 Adam steps
    # on a small model carry the last-bit differences into the parameters
    _same(rows(tmp_path / "multi"), rows(tmp_path / "one"), rtol=1e-3, atol=1e-4)
    _same(final_params(tmp_path / "multi"), final_params(tmp_path / "one"), rtol=1e-3, atol=1e-3)
