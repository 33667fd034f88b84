"""Ctrl-C on a run of two processes (jax.distributed over loopback on CPU): SIGINT sent to one of
them stops both at the end of the same chunk, after a checkpoint there, with one line each and
no traceback; ``--resume`` (both processes again) then logs the rows of a run never stopped."""
import json
import os
import signal
import subprocess
import time

from test_distributed import _cli, _env, _port, rows

from gfnem_jax import checkpoint

ARGS = ["train", "hypergrid", "--ndim", "2", "--height", "4", "--r0", "0.1", "--batch-size", "16",
        "--hidden", "32", "--log-every", "20", "--checkpoint-every", "40", "--seed", "3", "--quiet"]


def _start(out, steps, resume=False):
    port = _port()
    extra = ["--resume"] if resume else []
    return [subprocess.Popen(_cli(ARGS + ["--steps", str(steps), "--out", str(out)] + extra + [
        "--num-processes", "2", "--process-id", str(i), "--coordinator", f"127.0.0.1:{port}"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(2)]


def _finish(procs, timeout=300):
    try:
        return [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_ctrl_c_to_one_of_two_processes_stops_both_at_a_chunk_and_resumes(tmp_path):
    part, full = tmp_path / "part", tmp_path / "full"
    procs = _start(part, 100000)
    deadline = time.time() + 240
    while checkpoint.latest(str(part)) is None:  # the run is past step 40 and saving
        assert all(p.poll() is None for p in procs) and time.time() < deadline, \
            [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGINT)  # the process that is not the primary
    (rc0, err0), (rc1, err1) = _finish(procs, timeout=120)
    assert rc0 == 130 and rc1 == 130, (err0, err1)
    assert "Traceback" not in err0 + err1, (err0, err1)
    l0 = [ln for ln in err0.splitlines() if ln.strip()]
    l1 = [ln for ln in err1.splitlines() if ln.strip()]
    assert len(l1) == 2 and l1[0].startswith("gfnem (process 1): Ctrl-C: stopping at the end"), l1
    assert len(l0) == 1 and l0[0].startswith("gfnem: interrupted after step "), l0
    step = int(l0[0].split("after step ")[1].split(";")[0])
    assert l1[1] == l0[0]  # both stopped after the same step
    assert f"checkpoint (step {step})" in l0[0] and checkpoint.steps(str(part))[-1] == step
    # resume to the first logged row 40 steps on; the same rows as a run of that length
    total = (step // 20 + 2) * 20
    for rc, err in _finish(_start(part, total, resume=True)):
        assert rc == 0, err[-3000:]
    for rc, err in _finish(_start(full, total)):
        assert rc == 0, err[-3000:]
    assert [r["step"] for r in rows(full)] == list(range(20, total + 1, 20))
    assert rows(part) == rows(full)
    cfg = json.load(open(os.path.join(part, "config.json")))
    assert cfg["steps"] == total
