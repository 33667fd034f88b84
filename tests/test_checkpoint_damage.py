"""Damaged checkpoints are never loaded: every file of a checkpoint, damaged in turn (random bytes,
truncation, deletion), is caught by its manifest; ``--resume`` and ``gfnem sample`` fall back to
the newest sound checkpoint, saying so in one line, and the resumed rows equal those of a run
never stopped; with no sound checkpoint left the CLI answers in one line with exit 2."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from gfnem_jax import checkpoint, cli

HG = ["train", "hypergrid", "--ndim", "2", "--height", "4", "--r0", "0.1", "--steps", "60",
      "--batch-size", "16", "--hidden", "16", "--log-every", "20", "--checkpoint-every", "20",
      "--keep", "0", "--seed", "3", "--quiet"]
MIX = ["train", "mixture", "--n-data", "64", "--steps", "60", "--e-steps", "10", "--em-iters", "3",
       "--log-every", "20", "--checkpoint-every", "20", "--keep", "0", "--batch-size", "16",
       "--hidden", "16", "--seed", "2", "--no-plot", "--quiet"]
DAMAGES = ("bytes", "truncate", "delete")


def _rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r.pop("wall_s", None)
    return rows


def _damage(path: str, how: str, seed: int) -> None:
    if how == "delete":
        os.remove(path)
        return
    size = os.path.getsize(path)
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        return
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:  # up to 2 KB of random bytes in the middle (at least one changed)
        f.seek(size // 3)
        old = f.read(min(2048, max(size - size // 3, 1)))
        new = bytearray(rng.integers(0, 256, len(old), dtype=np.uint8).tobytes())
        if new == old:
            new[0] ^= 0xFF
        f.seek(size // 3)
        f.write(bytes(new))


@pytest.fixture(scope="module", params=["hypergrid", "mixture"])
def finished(request, tmp_path_factory):
    """A finished run with checkpoints at steps 20, 40 and 60."""
    out = str(tmp_path_factory.mktemp(request.param) / "run")
    cli.main((HG if request.param == "hypergrid" else MIX) + ["--out", out])
    assert checkpoint.steps(out) == [20, 40, 60]
    return request.param, out


def test_every_damage_to_every_file_is_caught(finished, tmp_path):
    """Each file of the newest checkpoint, damaged each way: verify names it and restore_newest
    passes over it to step 40 (the states restored are the sound checkpoint's)."""
    _, out = finished
    newest = checkpoint.latest(out)
    files = [os.path.relpath(os.path.join(d, n), newest)
             for d, _, names in os.walk(newest) for n in names]
    assert checkpoint.MANIFEST in files and len(files) >= 4
    assert checkpoint.verify(newest) is None
    for i, rel in enumerate(sorted(files)):
        for how in DAMAGES:
            if how == "truncate" and os.path.getsize(os.path.join(newest, rel)) == 0:
                continue
            run = str(tmp_path / f"{i}_{how}")
            shutil.copytree(out, run)
            ck = os.path.join(run, "checkpoint", "step_60")
            _damage(os.path.join(ck, rel), how, i)
            if rel == checkpoint.MARKER and how == "delete":
                assert checkpoint.steps(run) == [20, 40]  # an unfinished write: not a checkpoint
                continue
            assert checkpoint.verify(ck) is not None, (rel, how)
            skipped = []
            _, path = checkpoint.restore_newest(run, None, skipped=lambda p, w: skipped.append(p))
            assert path.endswith("step_40") and skipped == [ck], (rel, how)
            shutil.rmtree(run)


def test_resume_falls_back_to_the_sound_checkpoint_and_continues_exactly(finished, tmp_path,
                                                                        capsys):
    kind, out = finished
    args = HG if kind == "hypergrid" else MIX
    run = str(tmp_path / "run")
    shutil.copytree(out, run)
    newest = os.path.join(run, "checkpoint", "step_60")
    big = max((os.path.join(d, n) for d, _, ns in os.walk(newest) for n in ns), key=os.path.getsize)
    _damage(big, "bytes", 0)
    capsys.readouterr()
    cli.main(args + ["--out", run, "--resume"])
    err = capsys.readouterr().err
    assert "step_60 is damaged" in err and "using the one before it" in err
    assert _rows(run) == _rows(out)
    assert checkpoint.verify(newest) is None  # rewritten by the resumed run


def test_sample_falls_back_and_no_sound_checkpoint_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    cli.main(HG + ["--out", out])
    want = str(tmp_path / "a.npy")
    cli.main(["sample", "--run", out, "--n", "64", "--seed", "1", "--out", want])
    _damage(os.path.join(checkpoint.latest(out), checkpoint.MANIFEST), "bytes", 1)
    capsys.readouterr()
    got = str(tmp_path / "b.npy")
    cli.main(["sample", "--run", out, "--n", "64", "--seed", "1", "--out", got])
    assert "step_60 is damaged" in capsys.readouterr().err
    assert np.load(got).shape == np.load(want).shape  # drawn from step 40's sampler
    for n in (20, 40):
        _damage(os.path.join(out, "checkpoint", f"step_{n}", checkpoint.MANIFEST), "delete", 0)
        _damage(os.path.join(out, "checkpoint", f"step_{n}", checkpoint.MARKER), "bytes", 0)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--run", out, "--n", "64", "--out", str(tmp_path / "c.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len([x for x in err if x.startswith("gfnem: error")]) == 1
    assert "no checkpoint is sound" in err[-1] and "Traceback" not in "\n".join(err)


def test_damaged_rows_stop_a_resume_in_one_line_with_nothing_changed(finished, tmp_path, capsys):
    """metrics.jsonl damaged before its last line (random bytes, or deleted): the resume stops
    with one line naming the file, exit 2, and the run folder is as it was."""
    kind, out = finished
    args = HG if kind == "hypergrid" else MIX
    for how in ("bytes", "delete"):
        run = str(tmp_path / how)
        shutil.copytree(out, run)
        shutil.rmtree(os.path.join(run, "checkpoint", "step_60"))
        path = os.path.join(run, "metrics.jsonl")
        if how == "delete":
            os.remove(path)
        else:
            with open(path, "r+b") as f:
                f.seek(3)
                f.write(b"\xff\x00garbage")
        before = {p: open(os.path.join(run, p), "rb").read() for p in ("config.json",)
                  if os.path.exists(os.path.join(run, p))}
        rows_before = open(path, "rb").read() if os.path.exists(path) else None
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli.main(args + ["--out", run, "--resume"])
        err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("gfnem")]
        assert e.value.code == 2 and len(err) == 1 and "metrics.jsonl" in err[0], err
        assert (open(path, "rb").read() if os.path.exists(path) else None) == rows_before
        assert all(open(os.path.join(run, p), "rb").read() == b for p, b in before.items())
        assert checkpoint.steps(run) == [20, 40]


def _legacy(out: str) -> None:
    """Make every checkpoint of ``out`` look written before manifests existed (COMMIT holds only
    the step, no MANIFEST.json): nothing verifies its bytes but reading them."""
    for n in checkpoint.steps(out):
        path = os.path.join(out, "checkpoint", f"step_{n}")
        os.remove(os.path.join(path, checkpoint.MANIFEST))
        with open(os.path.join(path, checkpoint.MARKER), "w") as f:
            f.write(f"{n}\n")


def _array_files(path: str):
    """The data files of an orbax (OCDBT) checkpoint: its d/ folders."""
    return sorted(os.path.join(dp, x) for dp, _, names in os.walk(path) for x in names
                  if os.path.basename(dp) == "d")


def test_legacy_checkpoint_that_cannot_be_read_is_one_line_and_no_traceback_at_exit(tmp_path):
    """A checkpoint without a manifest whose array files are damaged fails inside orbax while
    other reads are in flight: ``gfnem sample`` (its own process, so that what is printed at exit
    is seen) falls back past it in one line, and with every checkpoint damaged ends in one line,
    exit 2 -- no "Event loop is closed" or coroutine traceback, then or at exit."""
    import subprocess
    import sys
    out = str(tmp_path / "run")
    cli.main(HG + ["--out", out])
    _legacy(out)
    env = dict(os.environ, JAX_PLATFORMS="cpu", GFNEM_NO_COMPILE_CACHE="1")
    sample = lambda name: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "gfnem_jax.cli", "sample", "--run", out, "--n", "16", "--out",
         str(tmp_path / name)], capture_output=True, text=True, env=env, timeout=300)
    for f in _array_files(checkpoint.latest(out)):  # truncated: random bytes may read as numbers
        _damage(f, "truncate", 0)
    r = sample("a.npy")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "step_60 is damaged" in r.stderr
    assert os.path.isfile(tmp_path / "a.npy")
    for n in (20, 40):
        for f in _array_files(os.path.join(out, "checkpoint", f"step_{n}")):
            _damage(f, "truncate", 0)
    r = sample("b.npy")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint is sound" in lines[0], r.stderr[-3000:]
    assert "step_60" in lines[0] and not os.path.exists(tmp_path / "b.npy")
