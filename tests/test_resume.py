"""Exact resume (issue 12, item 2): kill -9 at an arbitrary moment, then --resume, gives the same
parameters and metrics as a run never stopped; checkpoints are atomic and bounded; a run killed
before its first checkpoint restarts from step 0."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gfnem_jax import checkpoint, host_loop, loop, run_dir
from gfnem_jax.experiments import mixture, runner

GFNEM = [sys.executable, "-m", "gfnem_jax.cli", "train"]
ENV = {**os.environ, "GFNEM_NO_COMPILE_CACHE": "1", "JAX_PLATFORMS": "cpu"}
HG = dict(task="hypergrid", env=dict(ndim=2, height=4, r0=0.1, r1=0.5, r2=2.0), steps=300,
          batch_size=16, hidden=32, log_every=20, checkpoint_every=40, seed=3)
HG_ARGS = ["hypergrid", "--ndim", "2", "--height", "4", "--r0", "0.1", "--steps", "300",
           "--batch-size", "16", "--hidden", "32", "--log-every", "20", "--checkpoint-every", "40",
           "--seed", "3", "--quiet"]
MIX = dict(n_data=64, steps=150, e_steps=10, em_iters=5, log_every=10, checkpoint_every=20,
           batch_size=16, hidden=16, seed=2, plot=False)
MIX_ARGS = ["mixture", "--n-data", "64", "--steps", "150", "--e-steps", "10", "--em-iters", "5",
            "--log-every", "10", "--checkpoint-every", "20", "--batch-size", "16", "--hidden", "16",
            "--seed", "2", "--no-plot", "--quiet"]


def _rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for r in rows:
        r.pop("wall_s", None)
    return rows


def _leaves(out):
    return [np.asarray(a) for a in jax.tree.leaves(checkpoint.restore(checkpoint.latest(out)))]


def _start_until_first_checkpoint(args, out):
    """Start `gfnem train ARGS --out OUT` and return its Popen once its first checkpoint exists."""
    proc = subprocess.Popen(GFNEM + args + ["--out", out], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 150
    while checkpoint.latest(out) is None:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[1].decode()[-3000:])
        time.sleep(0.01)
    return proc


def _kill_after_first_checkpoint(args, out, seed, result):
    """Start `gfnem train ARGS --out OUT`, SIGKILL it at a random moment after its first
    checkpoint; append to ``result`` whether it was still running then (killed mid-run)."""
    proc = _start_until_first_checkpoint(args, out)
    try:
        time.sleep(random.Random(seed).uniform(0.0, 0.6))
        running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    result.append(running)


def _killed_run_beside(args, out, seed, uninterrupted):
    """The killed run in a subprocess while ``uninterrupted()`` runs here (2 cores: in parallel)."""
    result = []
    t = threading.Thread(target=_kill_after_first_checkpoint, args=(args, out, seed, result))
    t.start()
    try:
        uninterrupted()
    finally:
        t.join()
    return bool(result and result[0])


def _resume(args, out):
    """`gfnem train ARGS --out OUT --resume`, in this process (its compilations are warm)."""
    from gfnem_jax import cli
    cli.main(["train"] + args + ["--out", out, "--resume"])


def _check_same(full, part, steps, key=lambda r: r["step"]):
    a, b = _rows(full), _rows(part)
    keys = [key(r) for r in b]
    assert len(keys) == len(set(keys)), "a logged step appears twice"
    assert a == b
    assert max(r["step"] for r in b) == steps
    la, lb = _leaves(full), _leaves(part)
    assert len(la) == len(lb) > 3
    assert all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(la, lb))


def test_hypergrid_kill9_then_resume_is_bitwise_identical(tmp_path, capsys):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    proc_running = _killed_run_beside(HG_ARGS, part, 0,
                                      lambda: runner.run(HG, full, progress=False))
    killed_at = checkpoint.steps(part)[-1]
    _resume(HG_ARGS, part)
    _check_same(full, part, HG["steps"])
    assert proc_running and killed_at < HG["steps"]
    # wall_s keeps counting across the resume
    walls = [json.loads(line)["wall_s"] for line in open(os.path.join(part, "metrics.jsonl"))]
    assert walls == sorted(walls)


def test_mixture_kill9_then_resume_is_bitwise_identical(tmp_path, capsys):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    running = _killed_run_beside(MIX_ARGS, part, 1, lambda: mixture.run(MIX, full, progress=False))
    killed_at = checkpoint.steps(part)[-1]
    _resume(MIX_ARGS, part)
    _check_same(full, part, MIX["steps"], key=lambda r: (r["method"], r["step"]))
    assert running and killed_at < MIX["steps"]
    for name in ("summary.json", "params.npz"):
        assert os.path.isfile(os.path.join(part, name))
    sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (full, part))
    assert sa == sb


GRAMMAR_ARGS = ["grammar", "--steps", "160", "--batch-size", "8", "--nt", "3", "--pt", "4",
                "--dim", "16", "--max-len", "6", "--synth-train", "40", "--synth-valid", "10",
                "--synth-nt", "2", "--synth-pt", "3", "--synth-vocab", "8", "--log-every", "10",
                "--checkpoint-every", "20", "--seed", "1", "--quiet"]


def test_grammar_kill9_then_resume_is_bitwise_identical(tmp_path, capsys):
    """A second-wave run kind (grammar induction, marginal likelihood) killed mid-run."""
    from gfnem_jax import cli
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    running = _killed_run_beside(GRAMMAR_ARGS, part, 2,
                                 lambda: cli.main(["train"] + GRAMMAR_ARGS + ["--out", full]))
    killed_at = checkpoint.steps(part)[-1]
    _resume(GRAMMAR_ARGS, part)
    _check_same(full, part, 160)
    assert running and killed_at < 160
    for name in ("summary.json", "grammar.npz"):
        assert os.path.isfile(os.path.join(part, name)) == os.path.isfile(os.path.join(full, name))


def _state(step):
    params = {"w": jnp.arange(3.0) + step}
    return loop.init_state(params, optax.adam(1e-3), None, None,
                           jax.random.PRNGKey(0))._replace(step=jnp.int32(step))


def test_half_written_checkpoints_are_never_picked_up(tmp_path, monkeypatch):
    root = str(tmp_path)
    d = os.path.join(root, "checkpoint")
    checkpoint.save(root, _state(10), extras={"seen": np.arange(4)})
    good = checkpoint.latest(root)
    assert good.endswith("step_10") and os.path.isfile(os.path.join(good, checkpoint.MARKER))
    # a later step killed before its marker, and a temporary (even one holding the marker)
    shutil.copytree(good, os.path.join(d, "step_30"))
    os.remove(os.path.join(d, "step_30", checkpoint.MARKER))
    shutil.copytree(good, os.path.join(d, ".tmp_step_40"))
    # a save interrupted before the rename (as if killed there) leaves only its temporary
    real = os.replace
    def killed(*a):
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(OSError):
        checkpoint.save(root, _state(20))
    monkeypatch.setattr(checkpoint.os, "replace", real)
    assert os.path.isdir(os.path.join(d, ".tmp_step_20"))
    assert checkpoint.latest(root) == good and checkpoint.steps(root) == [10]
    st = checkpoint.restore(checkpoint.latest(root), _state(0))
    assert int(st.step) == 10 and np.array_equal(st.sampler["w"], np.arange(3.0) + 10)
    assert np.array_equal(checkpoint.load_extra(good, "seen"), np.arange(4))
    # the next save clears the debris; keep bounds what stays
    for s in (50, 60, 70):
        checkpoint.save(root, _state(s), keep=2)
    assert sorted(os.listdir(d)) == ["step_60", "step_70"]


def test_resume_without_checkpoint_starts_from_step_0(tmp_path):
    cfg = {**HG, "steps": 40, "log_every": 20, "checkpoint_every": 0}
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    runner.run(cfg, full, progress=False)
    # killed before its first checkpoint: config.json, a row (and a torn one), no checkpoint
    os.makedirs(part)
    shutil.copy(os.path.join(full, "config.json"), part)
    with open(os.path.join(part, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 20, "loss": 1.0}) + "\n" + '{"step": 40, "lo')
    os.makedirs(os.path.join(part, "checkpoint", ".tmp_step_20"))
    assert checkpoint.latest(part) is None
    assert run_dir.check_resume(runner.config_dict("hypergrid", *runner.settings_of(cfg)[1:]), part)
    runner.run(cfg, part, progress=False, resume=True)
    _check_same(full, part, 40)
    with pytest.raises(ValueError, match=r"seed \(saved 3, now 4\)"):
        runner.run({**cfg, "seed": 4}, part, progress=False, resume=True)
    with pytest.raises(ValueError, match="holds no run to resume"):
        runner.run(cfg, str(tmp_path / "none"), progress=False, resume=True)


def test_keep_checkpoints(tmp_path):
    out = str(tmp_path / "r")
    runner.run({**HG, "steps": 40, "log_every": 10, "checkpoint_every": 10, "keep_checkpoints": 2},
               out, progress=False)
    assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["step_30", "step_40"]


def test_wall_clock_checkpoints():
    """checkpoint_minutes: a checkpoint after the first chunk ending that long after the last."""
    def slow_chunk(state, data=None):
        time.sleep(0.04)
        return state._replace(step=state.step + 5), {"loss": jnp.ones(5)}

    cks = []
    host_loop.host_loop(_state(0), slow_chunk, 40, 5, on_checkpoint=lambda s: cks.append(int(s.step)),
                   checkpoint_minutes=0.1 / 60, progress=False)
    assert cks and cks == sorted(set(cks)) and len(cks) < 8 and all(c % 5 == 0 for c in cks)
    cks.clear()
    host_loop.host_loop(_state(0), slow_chunk, 40, 5, on_checkpoint=lambda s: cks.append(int(s.step)),
                   progress=False)
    assert cks == []


@pytest.mark.parametrize("kind", ["hypergrid", "sets", "mixture", "dvae", "ebm"])
def test_checkpoint_flags_on_every_resumable_kind(kind, capsys):
    from gfnem_jax import cli
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", kind, "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint-every", "--checkpoint-minutes", "--keep", "--resume"):
        assert flag in text, flag
    a = cli.build_parser().parse_args(["train", kind, "--out", "x", "--keep", "2", "--resume",
                                       "--checkpoint-minutes", "0.5", "--checkpoint-every", "7"])
    got = (a.keep_checkpoints, a.checkpoint_minutes, a.checkpoint_every, a.resume)
    assert got == (2, 0.5, 7, True)


def test_tensorboard_event_files_hold_the_logged_metrics(tmp_path):
    """--tensorboard writes the rows of metrics.jsonl as scalar events (tensorboardX), read back
    here from the TFRecord file with the writer's own protobuf."""
    import glob
    import struct
    from tensorboardX.proto import event_pb2
    from gfnem_jax import cli
    out = tmp_path / "tb"
    cli.main(["train", "hypergrid", "--ndim", "2", "--height", "4", "--steps", "20",
              "--batch-size", "8", "--log-every", "10", "--quiet", "--tensorboard", "--out", str(out)])
    files = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert len(files) == 1
    data, seen = open(files[0], "rb").read(), {}
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            seen[(v.tag, ev.step)] = v.simple_value
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    for r in rows:
        for k in ("loss", "l1"):
            assert abs(seen[(k, r["step"])] - r[k]) < 1e-6 * max(1.0, abs(r[k]))


def test_ctrl_c_stops_with_one_line_naming_the_step_and_the_checkpoint(tmp_path):
    """SIGINT (Ctrl-C) mid-run: exit 130, a line on stderr answering the press (where it will
    stop), then one naming the last finished step and the checkpoint written there that a resume
    starts from, no traceback."""
    out = str(tmp_path / "run")
    args = [a if a != "300" else "100000" for a in HG_ARGS]
    proc = _start_until_first_checkpoint(args, out)
    try:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # the answer to the press, then the stop: one line each, no traceback
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("gfnem: Ctrl-C: stopping at the end of the current chunk"), err
    assert lines[1].startswith("gfnem: interrupted after step ") and "--resume" in lines[1], err
    step = int(lines[1].split("after step ")[1].split(";")[0])
    assert f"checkpoint (step {step})" in lines[1], err  # saved where it stopped
    assert checkpoint.steps(out)[-1] == step


def test_resume_of_a_run_saved_before_a_setting_existed(tmp_path):
    """A config.json without a setting added later resumes when the setting is at its default,
    and is refused, naming it, when it is not."""
    from gfnem_jax.experiments.grammar import GrammarSettings
    s = GrammarSettings(nt=3, pt=4)
    old = {k: v for k, v in s.to_dict().items() if k not in ("lr_drop", "lr_drop_at")}
    run_dir.write_config(str(tmp_path), old)
    run_dir.check_resume(s.to_dict(), str(tmp_path), defaults=GrammarSettings.defaults())
    with pytest.raises(ValueError, match=r"lr_drop \(saved unset, now 1.0\)"):
        run_dir.check_resume(s.to_dict(), str(tmp_path))  # without defaults: a difference
    with pytest.raises(ValueError, match=r"lr_drop \(saved 1.0, now 0.5\)"):
        run_dir.check_resume(s.replace(lr_drop=0.5).to_dict(), str(tmp_path),
                             defaults=GrammarSettings.defaults())


def _interrupt_at(exp, at):
    """``exp`` whose compiled chunks send SIGINT (Ctrl-C) to this process while running the
    chunk that starts at step ``at``."""
    make = exp.make_chunk

    def make_chunk(n):
        run = make(n)

        def chunk(st, data):
            if int(jax.device_get(st.step)) == at:
                os.kill(os.getpid(), signal.SIGINT)
            return run(st, data)
        return chunk
    exp.make_chunk = make_chunk
    return exp


def test_ctrl_c_mid_interval_checkpoints_at_the_chunk_and_resumes_bitwise(tmp_path, capsys):
    """Ctrl-C inside an interval of 20 steps (chunks of 2): a line at once saying where it will
    stop, a checkpoint at that chunk's end (step 46, mid-interval), and a resume from it gives
    the rows and parameters of a run never stopped."""
    from gfnem_jax import driver
    cfg = {**HG, "steps": 100}
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    settings = lambda: runner.task_module("hypergrid").Settings.from_config(cfg)
    driver.run(runner.experiment(settings()), full, progress=False)
    with pytest.raises(host_loop.Interrupted, match=r"after step 46; .*checkpoint \(step 46\)"):
        driver.run(_interrupt_at(runner.experiment(settings()), 44), part, progress=False)
    err = capsys.readouterr().err
    assert "Ctrl-C: stopping at the end of the current chunk (step 46)" in err, err
    assert checkpoint.steps(part)[-1] == 46 and _rows(part)[-1]["step"] == 40
    driver.run(runner.experiment(settings()), part, progress=False, resume=True)
    _check_same(full, part, cfg["steps"])


def test_mixture_ctrl_c_mid_interval_then_resume_gives_the_same_rows(tmp_path, capsys):
    """A kind writing one row per step (``log_rows``) and counting steps from its state
    (``first_rows``): Ctrl-C at step 26 of an interval of 10, then a resume, gives the rows of a
    run never stopped."""
    from gfnem_jax import driver
    cfg = {**MIX, "steps": 40}
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    build = lambda: mixture.build(mixture._settings(cfg))
    driver.run(build(), full, progress=False)
    with pytest.raises(host_loop.Interrupted, match=r"after step 26;"):
        driver.run(_interrupt_at(build(), 24), part, progress=False)
    assert checkpoint.steps(part) == [20, 26]
    driver.run(build(), part, progress=False, resume=True)
    _check_same(full, part, cfg["steps"], key=lambda r: (r["method"], r["step"]))
