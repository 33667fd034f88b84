"""Host loop: chunking, logging, non-finite losses stop the run with the step number."""
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.host_loop import NonFiniteLoss, host_loop, pick_chunk
from gfnem_jax.loop import LoopState


def _fake_chunk(n, bad_at=None):
    def run_chunk(state, data=None):
        steps = np.arange(int(state.step) + 1, int(state.step) + n + 1)
        loss = np.where(steps == bad_at, np.nan, 1.0 / steps)
        return state._replace(step=state.step + n), {"loss": jnp.asarray(loss), "log_z": jnp.zeros(n)}
    return run_chunk


def _state():
    return LoopState({}, (), None, None, jnp.zeros(()), jnp.zeros((), jnp.int32), None)


def test_logs_one_row_per_chunk_and_checkpoints():
    rows, cks = [], []
    st = host_loop(_state(), _fake_chunk(5), 20, 5, on_log=rows.append,
                    on_checkpoint=lambda s: cks.append(int(s.step)), checkpoint_every=10, progress=False)
    assert int(st.step) == 20
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert cks == [10, 20]
    assert rows[0]["loss"] == pytest.approx(np.mean(1.0 / np.arange(1, 6)))
    assert all("wall_s" in r for r in rows)


def test_non_finite_loss_names_step_and_keeps_last_checkpoint():
    cks = []
    with pytest.raises(NonFiniteLoss, match="loss at step 13.*checkpoint \\(step 10\\)"):
        host_loop(_state(), _fake_chunk(5, bad_at=13), 30, 5, on_checkpoint=lambda s: cks.append(int(s.step)),
                   checkpoint_every=5, progress=False)
    assert cks == [5, 10]


@pytest.mark.parametrize("steps,log_every,expect", [(2000, 100, 100), (7, 100, 7), (10, 3, 2), (13, 5, 1)])
def test_pick_chunk_divides(steps, log_every, expect):
    assert pick_chunk(steps, log_every) == expect


def test_non_finite_before_any_checkpoint_says_so():
    with pytest.raises(NonFiniteLoss, match=r"step 3 \(.*\); no checkpoint had been written yet"):
        host_loop(_state(), _fake_chunk(5, bad_at=3), 10, 5, progress=False)


class _Bar:
    """A stand-in for tqdm recording each update with the postfix shown at that moment."""
    shown: list = []

    def __init__(self, *a, disable=False, **k):
        self.disable, self.postfix = disable, {}
        _Bar.shown.clear()

    def set_postfix(self, d, refresh=True):
        self.postfix = dict(d)

    def update(self, n):
        _Bar.shown.append((n, dict(self.postfix)))

    def write(self, msg, file=None):
        _Bar.shown.append(("write", msg))

    def close(self):
        pass


def _maker(calls=None):
    """make_chunk(n) of the fake chunk, recording (start step, n) of every call."""
    def make(n):
        inner = _fake_chunk(n)

        def run(state, data=None):
            if calls is not None:
                calls.append((int(state.step), n))
            return inner(state, data)
        return run
    return make


def test_bar_advances_every_chunk_and_rows_come_every_interval(monkeypatch, capsys):
    """Chunks of 2 steps in intervals of 10: the bar moves by 2 after every chunk showing that
    chunk's last loss; one row per 10 steps with the mean over its 10 steps; a line says what
    compiles first."""
    import tqdm.auto
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    rows, calls = [], []
    host_loop(_state(), _maker(calls)(2), 30, 2, interval=10, make_chunk=_maker(calls),
              on_log=rows.append, progress=True, postfix=("loss",))
    ups = [u for u in _Bar.shown if u[0] != "write"]
    writes = [u[1] for u in _Bar.shown if u[0] == "write"]
    assert [n for n, _ in ups] == [2] * 15
    assert [float(p["loss"]) for _, p in ups] == pytest.approx([1.0 / s for s in range(2, 31, 2)],
                                                                rel=1e-3)
    assert len(writes) == 1 and "compiling the training step" in writes[0]
    assert calls == [(s, 2) for s in range(0, 30, 2)]
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        lo = r["step"] - 9
        assert r["loss"] == float(np.asarray(1.0 / np.arange(lo, lo + 10), np.float32).mean())
        assert r["loss_last"] == float(np.float32(1.0 / r["step"]))


def test_rows_do_not_depend_on_the_chunk():
    """The rows of a 10-step interval run as chunks of 1, 2, 5 and 10 steps are identical
    (wall_s aside), and a summarize hook sees the whole interval's metrics."""
    def run(c):
        rows, seen = [], []
        host_loop(_state(), _maker()(c), 40, c, interval=10, make_chunk=_maker(),
                  summarize=lambda m: seen.append(len(m["loss"])) or {"n": len(m["loss"])},
                  on_log=rows.append, progress=False)
        assert seen == [10] * 4
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    ref = run(10)
    assert [r["step"] for r in ref] == [10, 20, 30, 40]
    for c in (1, 2, 5):
        assert run(c) == ref, c


def test_slow_chunks_are_split():
    """A chunk taking longer than 2.5 x target_s (after its first, compiling call) makes the loop
    go on in chunks of a divisor that takes about target_s; the rows stay the same."""
    import time as _time
    calls = []

    def make(n):
        inner = _maker(calls)(n)

        def run(state, data=None):
            _time.sleep(0.02 * n)
            return inner(state, data)
        return run
    rows = []
    host_loop(_state(), make(10), 40, 10, interval=20, make_chunk=make, on_log=rows.append,
              progress=False, target_s=0.05)
    sizes = [n for _, n in calls]
    assert sizes[:2] == [10, 10] and set(sizes[2:]) == {2} and sum(sizes) == 40
    assert [r["step"] for r in rows] == [20, 40]
    assert rows[0]["loss"] == float(np.asarray(1.0 / np.arange(1, 21), np.float32).mean())


def test_ctrl_c_mid_interval_checkpoints_at_the_chunk_and_a_resume_gives_the_same_rows():
    """SIGINT during the chunk ending at step 14 (interval 10, chunks of 2): the loop stops
    there with a checkpoint carrying the metrics of steps 11-14; resuming from it with those
    metrics logs the rows of a run never stopped."""
    import os
    import signal
    from gfnem_jax.host_loop import Interrupted

    def make(n):
        inner = _fake_chunk(n)

        def run(state, data=None):
            if int(state.step) == 12:
                os.kill(os.getpid(), signal.SIGINT)
            return inner(state, data)
        return run
    ref = []
    host_loop(_state(), _maker()(2), 30, 2, interval=10, make_chunk=_maker(), on_log=ref.append,
              progress=False)
    rows, cks, pend = [], [], []
    with pytest.raises(Interrupted, match=r"after step 14; the last good checkpoint \(step 14\)"):
        host_loop(_state(), make(2), 30, 2, interval=10, make_chunk=make, on_log=rows.append,
                  on_checkpoint=cks.append, on_pending=pend.append, progress=False)
    assert [int(s.step) for s in cks] == [14] and [r["step"] for r in rows] == [10]
    assert len(pend[0]["loss"]) == 4
    host_loop(cks[0], _maker()(2), 16, 2, interval=10, make_chunk=_maker(), on_log=rows.append,
              pending=pend[0], progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]
    assert strip(rows) == strip(ref)


def test_ctrl_c_is_answered_while_the_chunk_still_runs(capsys):
    """The line answering Ctrl-C comes from a watcher thread (``signal.set_wakeup_fd``), not from
    the main thread, which may sit in a compiled chunk for minutes: it appears within a second
    while the chunk is still running, and names the step the run will stop at."""
    import os
    import signal
    import time as _time
    from gfnem_jax.host_loop import Interrupted
    seen = []

    def make(n):
        inner = _fake_chunk(n)

        def run(state, data=None):
            if int(state.step) == 4:
                os.kill(os.getpid(), signal.SIGINT)
                t = _time.perf_counter()
                err = ""
                while "Ctrl-C" not in err and _time.perf_counter() - t < 1.0:
                    _time.sleep(0.01)
                    err += capsys.readouterr().err
                seen.append(err)
            return inner(state, data)
        return run
    with pytest.raises(Interrupted, match="after step 6"):
        host_loop(_state(), make(2), 20, 2, interval=10, make_chunk=make, progress=False,
                  on_checkpoint=lambda s: None)
    assert "stopping at the end of the current chunk (step 6)" in seen[0], seen
