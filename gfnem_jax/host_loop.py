"""The host loop between compiled chunks: logging, progress, checkpoints, Ctrl-C, the stop on a
non-finite loss (``gfnem_jax.driver`` runs every run kind through it).

``host_loop(state, run_chunk, steps, chunk, ...)`` calls ``run_chunk`` (``loop.make_chunk``)
``steps // chunk`` times with no host sync inside a chunk; between chunks it turns the chunk's
metrics into a logged row, draws the progress bar, checkpoints when due, and stops cleanly on
Ctrl-C (at the end of the chunk) or on a non-finite metric (``NonFiniteLoss``, naming the step
and the last good checkpoint).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from gfnem_jax.loop import tree_finite


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (Ctrl-C) inside ``host_loop``; ``str(e)`` names the last step finished
    and the checkpoint that a resume would start from."""


def pick_chunk(steps: int, log_every: int) -> int:
    """The largest divisor of ``steps`` not above ``log_every`` (at least 1)."""
    log_every = max(1, min(log_every, steps))
    for c in range(log_every, 0, -1):
        if steps % c == 0:
            return c
    return 1


def host_loop(state, run_chunk, steps: int, chunk: int, data_fn: Optional[Callable] = None,
              summarize: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, Any]]] = None,
              evaluate: Optional[Callable[[Any], Dict[str, Any]]] = None,
              on_log: Optional[Callable[[Dict[str, Any]], None]] = None,
              on_checkpoint: Optional[Callable[[Any], None]] = None,
              checkpoint_every: int = 0, last_checkpoint: Optional[int] = None,
              progress: bool = True, desc: str = "train",
              postfix: tuple = ("loss", "l1", "log_z", "nll"), wall_offset: float = 0.0,
              checkpoint_minutes: float = 0.0):
    """Run ``steps`` steps in chunks of ``chunk`` (a divisor); log and checkpoint between chunks.

    data_fn(chunk_index) -> the ``data`` argument of each chunk (host-fed batches); None = none.
    A logged row is {"step", "loss" (mean over the chunk's sampler steps), "loss_last"} plus
    ``summarize(metrics of the chunk)`` and ``evaluate(state)`` and "wall_s" (seconds since the
    loop started, compilation included, plus ``wall_offset`` carried over a resume); "loss" and
    "loss_last" only if the chunk's metrics hold a "loss". A non-finite float metric raises
    NonFiniteLoss naming the 1-based step and the last good checkpoint (or that there is none);
    so does a NaN returned by ``evaluate`` (an infinite evaluation, e.g. a KL to a distribution
    with a zero, is reported as it is), and a state holding a NaN or Inf when a checkpoint is due
    (which is then not written).
    No host sync inside a chunk. With several processes (``gfnem_jax.distributed``) the state
    stays a global array between chunks; metrics, ``evaluate`` and ``summarize`` see this
    process's replica, only the primary process draws progress, and the checkpoint decision is
    the primary's (every process takes part in a checkpoint).
    Checkpoints (``on_checkpoint(state)``) after a chunk ending at a multiple of
    ``checkpoint_every`` steps, and after the first chunk ending more than ``checkpoint_minutes``
    minutes after the last checkpoint (or the loop's start); 0 turns either off.
    """
    from tqdm.auto import tqdm
    from gfnem_jax import distributed as D
    multi = D.process_count() > 1
    bar = tqdm(total=steps, desc=desc, disable=not progress or not D.is_primary(), file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    last_ck = last_checkpoint
    t0 = time.perf_counter()
    t_ck = t0
    step = None
    interrupted: list = []
    restore_sigint = _sigint_to_flag(interrupted)
    try:
        for c in range(steps // chunk):
            data = None if data_fn is None else data_fn(c)
            state, m = run_chunk(state, data)
            m = jax.device_get(D.to_local(m))
            step = int(D.to_local(state.step))
            bad = _first_non_finite(m, step - chunk)
            if bad is not None:
                raise NonFiniteLoss(f"non-finite {bad[1]} at step {bad[0]} (a loss, reward or "
                                    f"gradient went NaN or Inf); {_kept(last_ck)}")
            row: Dict[str, Any] = {"step": step}
            if "loss" in m:
                loss = np.asarray(m["loss"])
                sel = np.asarray(m["e_step"], bool) if "e_step" in m else np.ones(loss.shape, bool)
                if sel.any():
                    row["loss"] = float(loss[sel].mean())
                    row["loss_last"] = float(loss[sel][-1])
            if summarize is not None:
                row.update(summarize(m))
            if evaluate is not None:
                ev = evaluate(D.to_local(state))
                bad = [k for k, v in ev.items() if isinstance(v, float) and np.isnan(v)]
                if bad:
                    raise NonFiniteLoss(f"NaN {bad[0]} in the evaluation after step {step}; "
                                        + _kept(last_ck))
                row.update(ev)
            row["wall_s"] = round(wall_offset + time.perf_counter() - t0, 4)
            if on_log is not None:
                on_log(row)
            bar.update(chunk)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in postfix
                             if isinstance(row.get(k), (int, float))}, refresh=False)
            due = bool(checkpoint_every) and step % checkpoint_every == 0
            due |= checkpoint_minutes > 0 and time.perf_counter() - t_ck > 60 * checkpoint_minutes
            if multi:  # one decision for all processes: a checkpoint is collective
                from jax.experimental import multihost_utils
                due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
            if on_checkpoint is not None and due:
                if not bool(_finite_state(D.to_local(state))):
                    raise NonFiniteLoss(f"non-finite parameters after step {step}; "
                                        + _kept(last_ck))
                on_checkpoint(state)
                last_ck = step
                t_ck = time.perf_counter()
            if interrupted:
                raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        at = f"after step {step}" if step is not None else "before the first logged step"
        raise Interrupted(f"interrupted {at}; {_kept(last_ck)}") from None
    finally:
        restore_sigint()
        bar.close()
    return state


_finite_state = jax.jit(tree_finite)


def _sigint_to_flag(pending: list) -> Callable[[], None]:
    """Turn Ctrl-C (SIGINT) into a flag for the training loop; returns the function that puts the
    previous handler back. The first SIGINT appends True to ``pending`` and the loop stops at the
    end of the chunk (after its checkpoint, if one is due), so a checkpoint is either not begun or
    complete and counted, and a SIGINT that lands while Python runs inside a JAX callback
    (compilation cache, checkpointing threads) is not lost. A second Ctrl-C raises
    KeyboardInterrupt at once (a long compilation). Only in the main thread (elsewhere Python
    delivers no signals and this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(*_):
        if pending:
            raise KeyboardInterrupt
        pending.append(True)

    old = signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, signal.SIG_DFL if old is None else old)


def _kept(last_ck) -> str:
    return (f"the last good checkpoint (step {last_ck}) is kept" if last_ck is not None
            else "no checkpoint had been written yet")


def _first_non_finite(m: Dict[str, np.ndarray], start: int):
    """(1-based step, metric name) of the first non-finite float metric of a chunk, or None."""
    first = None
    for k, v in m.items():
        v = np.asarray(v)
        if v.dtype.kind != "f" or v.ndim != 1:
            continue
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            if first is None or i < first[0]:
                first = (i, k)
    return None if first is None else (start + first[0] + 1, first[1])
