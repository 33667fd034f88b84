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
