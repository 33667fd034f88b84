"""The host loop between compiled chunks: logging, progress, checkpoints, Ctrl-C, the stop on a
non-finite loss (``gfnem_jax.driver`` runs every run kind through it).

``host_loop(state, run_chunk, steps, chunk, interval=...)`` calls compiled chunks of ``chunk``
steps (``loop.make_chunk``) with no host sync inside a chunk. After every chunk it draws the
progress bar (the chunk's last metrics) and checks for a non-finite metric (``NonFiniteLoss``,
naming the step and the last good checkpoint); every ``interval`` steps it turns the metrics of
the interval (the chunks' metrics concatenated on the host: the same arrays a single chunk of
``interval`` steps returns) into one logged row and checkpoints when due. Ctrl-C is answered at
once on stderr and stops the run at the end of the current chunk, with a checkpoint there (it
carries the metrics of the unfinished interval, ``pending``, so a resume logs the same rows).
With ``make_chunk`` the loop moves to smaller chunks (a divisor of the current one) when a
chunk takes longer than a few seconds, so the bar moves and Ctrl-C is bounded by a chunk's time.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from gfnem_jax.loop import tree_finite

TARGET_S = 2.0  # seconds a chunk should take; one taking over 2.5x that is split


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


def first_chunk(interval: int) -> int:
    """Steps of the first compiled chunk of a logging interval: its largest divisor not above a
    tenth of it (so the bar moves ~10 times per logged row before any timing is known), at
    least 2 (``scan_divisor``)."""
    return scan_divisor(interval, interval // 10)


def smaller_chunk(n: int, seconds: float, target: float = TARGET_S) -> int:
    """The largest divisor of ``n`` (at least 2, ``scan_divisor``) whose chunk would take at most
    ``target`` seconds when ``n`` steps took ``seconds``."""
    return scan_divisor(n, int(target * n / max(seconds, 1e-9)))


def scan_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` in [2, at_most], else its smallest divisor above 1 (``n``
    itself when prime; 1 only for n = 1). Never 1 for n > 1: a chunk of one step compiles
    without a loop around it (``loop.make_chunk``), a program whose arithmetic can differ from
    the scan's in the last bits (the GFlowNet-EM grammar step on XLA:CPU does), while scans of
    any length give the same numbers."""
    for c in range(min(at_most, n), 1, -1):
        if n % c == 0:
            return c
    return next((c for c in range(2, n + 1) if n % c == 0), 1)


def host_loop(state, run_chunk, steps: int, chunk: int, data_fn: Optional[Callable] = None,
              summarize: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, Any]]] = None,
              evaluate: Optional[Callable[[Any], Dict[str, Any]]] = None,
              on_log: Optional[Callable[[Dict[str, Any]], None]] = None,
              on_checkpoint: Optional[Callable[[Any], None]] = None,
              checkpoint_every: int = 0, last_checkpoint: Optional[int] = None,
              progress: bool = True, desc: str = "train",
              postfix: tuple = ("loss", "l1", "log_z", "nll"), wall_offset: float = 0.0,
              checkpoint_minutes: float = 0.0, interval: Optional[int] = None,
              make_chunk: Optional[Callable[[int], Callable]] = None,
              pending: Optional[Dict[str, np.ndarray]] = None,
              on_pending: Optional[Callable[[Optional[Dict[str, np.ndarray]]], None]] = None,
              target_s: float = TARGET_S, after_first_chunk: Optional[Callable[[], None]] = None):
    """Run ``steps`` steps in compiled chunks; log every ``interval`` steps, checkpoint between.

    run_chunk(state, data) -> (state, metrics[chunk]): ``chunk`` steps in one compiled call.
    interval: steps per logged row (default ``chunk``); ``chunk`` divides it, and ``steps`` plus
      the steps of ``pending`` is a multiple of it.
    make_chunk(n) -> run_chunk of n steps: with it, a chunk taking over 2.5 x ``target_s``
      seconds (after its compilation) makes the loop compile and use the largest divisor of it
      that takes about ``target_s``; without it every chunk has ``chunk`` steps.
    pending: the metrics of the steps of the current interval done before (a resume from a
      checkpoint saved mid-interval); the first row covers them and the steps after.
    on_pending(metrics or None): called just before each ``on_checkpoint`` with the metrics of
      the unfinished interval (None at an interval's end), for the checkpoint to carry them.
    data_fn(chunk_index) -> the ``data`` argument of each chunk (host-fed batches); None = none.
    after_first_chunk(): called once, right after the first chunk has run (before its metrics
      are looked at), e.g. to log the rows of the state before it once the chunk is compiled.
    A logged row is {"step", "loss" (mean over the interval's sampler steps), "loss_last"} plus
    ``summarize(metrics of the interval)`` and ``evaluate(state)`` and "wall_s" (seconds since
    the loop started, compilation included, plus ``wall_offset`` carried over a resume); "loss"
    and "loss_last" only if the metrics hold a "loss". A non-finite float metric raises
    NonFiniteLoss naming the 1-based step and the last good checkpoint (or that there is none);
    so does a NaN returned by ``evaluate`` (an infinite evaluation, e.g. a KL to a distribution
    with a zero, is reported as it is), and a state holding a NaN or Inf when a checkpoint is due
    (which is then not written).
    The progress bar advances after every chunk, showing the chunk's last metrics (and the last
    row's for keys only rows hold); with progress on, a line on stderr says the first chunk is
    compiling. No host sync inside a chunk. With several processes (``gfnem_jax.distributed``)
    the state stays a global array between chunks; metrics, ``evaluate`` and ``summarize`` see
    this process's replica, only the primary process draws progress, the checkpoint and
    chunk-size decisions are the primary's (every process takes part in a checkpoint), and
    Ctrl-C sent to any process stops all of them at the end of the same chunk.
    Checkpoints (``on_checkpoint(state)``) after an interval ending at a multiple of
    ``checkpoint_every`` steps, and after the first interval ending more than
    ``checkpoint_minutes`` minutes after the last checkpoint (or the loop's start); 0 turns
    either off. Ctrl-C: a line on stderr at once; the loop stops at the end of the current chunk
    after a checkpoint there (``Interrupted``); a second Ctrl-C raises at once.
    """
    from tqdm.auto import tqdm
    from gfnem_jax import distributed as D
    from gfnem_jax.startup import release_memory, trim_after_compiles
    release_memory()  # what compiling the evaluation (a step-0 row) left mapped
    trim_after_compiles()  # and each training chunk's compiler memory before its first run
    multi = D.process_count() > 1
    primary = D.is_primary()
    interval = interval or chunk
    if interval % chunk:
        raise ValueError(f"a chunk of {chunk} steps does not divide the interval of {interval}")
    acc: List[Dict[str, np.ndarray]] = [dict(pending)] if pending else []
    pos = _length(pending) if pending else 0  # steps of the current interval done
    if pos >= interval or (make_chunk is None and pos % chunk):
        raise ValueError(f"{pos} pending steps do not fit an interval of {interval} steps in "
                         f"chunks of {chunk}")
    bar = tqdm(total=steps, desc=desc, disable=not progress or not primary, file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg, file=sys.stderr)) if not bar.disable else (
        lambda msg: (sys.stderr.write(msg + "\n"), sys.stderr.flush()))
    compiled = {chunk: run_chunk}
    del run_chunk  # only ``compiled`` holds it: a chunk size given up frees its program
    timed = set()  # chunk sizes run once already (their compilation is behind them)
    last_ck = last_checkpoint
    t0 = time.perf_counter()
    t_ck = t0
    step = int(D.to_local(state.step))
    done = 0
    show: Dict[str, Any] = {}
    where = {"end": step, "last_ck": last_ck, "ck": on_checkpoint is not None}
    ctrl_c = _CtrlC(lambda: _stopping_line(where, None if primary else D.process_index()), say)
    c = 0
    evaluated = False
    try:
        while done < steps:
            n = chunk if pos % chunk == 0 else math.gcd(chunk, pos)
            if n not in compiled:
                compiled[n] = make_chunk(n)
            if progress and primary and n not in timed:
                say(f"{desc}: compiling the training step (a chunk of {n} step"
                    f"{'s' if n > 1 else ''}{', the first' if not timed else ''}) ...")
            data = None if data_fn is None else data_fn(c)
            where["end"] = step + n
            t_chunk = time.perf_counter()
            state, m = compiled[n](state, data)
            m = jax.device_get(D.to_local(m))
            seconds = time.perf_counter() - t_chunk
            c += 1
            if n not in timed:  # its first run: compiled just now
                release_memory()
            if after_first_chunk is not None:
                after_first_chunk()
                after_first_chunk = None
                release_memory()
            step = int(D.to_local(state.step))
            done += n
            pos += n
            bad = _first_non_finite(m, step - n)
            if bad is not None:
                raise NonFiniteLoss(f"non-finite {bad[1]} at step {bad[0]} (a loss, reward or "
                                    f"gradient went NaN or Inf); {_kept(last_ck)}")
            acc.append(m)
            at_step = _chunk_postfix(m, postfix)
            show.update(at_step)
            row = None
            if pos == interval:
                mi = _concat(acc)
                acc, pos = [], 0
                row = _row(mi, step, summarize)
                if evaluate is not None:
                    ev = evaluate(D.to_local(state))
                    if not evaluated:  # its programs compiled (the first evaluation here)
                        evaluated = release_memory() or True
                    bad = [k for k, v in ev.items() if isinstance(v, float) and np.isnan(v)]
                    if bad:
                        raise NonFiniteLoss(f"NaN {bad[0]} in the evaluation after step {step}; "
                                            + _kept(last_ck))
                    row.update(ev)
                row["wall_s"] = round(wall_offset + time.perf_counter() - t0, 4)
                if on_log is not None:
                    on_log(row)
                show.update({k: row[k] for k in postfix  # keys only rows hold (evaluations)
                             if k not in at_step and isinstance(row.get(k), (int, float))})
            bar.set_postfix({k: f"{v:.4g}" for k, v in show.items()}, refresh=False)
            bar.update(n)
            due = row is not None and bool(checkpoint_every) and step % checkpoint_every == 0
            due |= (row is not None and checkpoint_minutes > 0
                    and time.perf_counter() - t_ck > 60 * checkpoint_minutes)
            stop = bool(ctrl_c.pressed)
            new = chunk
            if make_chunk is not None and n == chunk and n in timed and seconds > 2.5 * target_s:
                new = smaller_chunk(n, seconds, target_s)
            timed.add(n)
            if multi:  # one decision for all processes: checkpoints and programs are collective
                due, stop, new = _agree(due, stop, new)
            if new != chunk:
                if progress and primary:
                    say(f"{desc}: a chunk of {chunk} steps took {seconds:.1f} s; going on in "
                        f"chunks of {new}")
                compiled.pop(chunk, None)  # never run again: its program can be freed
                chunk = new
            if n != chunk:  # a partial chunk (the rest of an interval): not run again
                compiled.pop(n, None)
            if on_checkpoint is not None and (due or (stop and step != last_ck)):
                if not bool(_finite_state(D.to_local(state))):
                    raise NonFiniteLoss(f"non-finite parameters after step {step}; "
                                        + _kept(last_ck))
                if on_pending is not None:
                    on_pending(_concat(acc) if acc else None)
                on_checkpoint(state)
                last_ck = where["last_ck"] = step
                t_ck = time.perf_counter()
            if stop:
                raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        at = f"after step {step}" if done else "before the first chunk ended"
        raise Interrupted(f"interrupted {at}; {_kept(last_ck)}") from None
    finally:
        ctrl_c.close()
        bar.close()
    return state


_finite_state = jax.jit(tree_finite)


def _row(m: Dict[str, np.ndarray], step: int, summarize) -> Dict[str, Any]:
    """The logged row of an interval's metrics (before ``evaluate`` and "wall_s")."""
    row: Dict[str, Any] = {"step": step}
    if "loss" in m:
        loss = np.asarray(m["loss"])
        sel = np.asarray(m["e_step"], bool) if "e_step" in m else np.ones(loss.shape, bool)
        if sel.any():
            row["loss"] = float(loss[sel].mean())
            row["loss_last"] = float(loss[sel][-1])
    if summarize is not None:
        row.update(summarize(m))
    return row


def _chunk_postfix(m: Dict[str, np.ndarray], keys) -> Dict[str, float]:
    """The bar's values after a chunk: each of ``keys`` among its per-step metrics at its last
    step ("loss" at its last sampler step, as "loss_last" of a row)."""
    out = {}
    for k in keys:
        v = np.asarray(m.get(k, ()))
        if k == "loss" and "e_step" in m and v.ndim == 1:
            v = v[np.asarray(m["e_step"], bool)]
        if v.ndim == 1 and v.size and v.dtype.kind == "f":
            out[k] = float(v[-1])
    return out


def _length(m: Dict[str, np.ndarray]) -> int:
    return len(np.asarray(next(iter(m.values())))) if m else 0


def _concat(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The metrics of consecutive chunks as those of one chunk (concatenated per step)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def _agree(due: bool, stop: bool, new: int):
    """(due, stop, new) as every process will act on them: the primary's checkpoint and
    chunk-size decisions, and a stop when any process was sent Ctrl-C (one collective)."""
    from jax.experimental import multihost_utils
    got = np.asarray(multihost_utils.process_allgather(
        np.asarray([due, stop, new], np.int64))).reshape(-1, 3)
    return bool(got[0, 0]), bool(got[:, 1].any()), int(got[0, 2])


def _stopping_line(where: Dict[str, Any], process: Optional[int] = None) -> str:
    """The answer to the first Ctrl-C (``process``: the index of a process other than the
    primary that was sent it)."""
    end, last = where["end"], where["last_ck"]
    who = "gfnem" if process is None else f"gfnem (process {process})"
    if where["ck"]:
        then = f"a checkpoint there; --resume continues from step {end}"
    else:
        then = "no checkpoint is written"
    again = (f" (the last checkpoint, step {last}, is kept)" if last is not None and where["ck"]
             else "")
    return (f"{who}: Ctrl-C: stopping at the end of the current chunk (step {end}), {then}; "
            f"press Ctrl-C again to stop at once{again}")


class _CtrlC:
    """Ctrl-C (SIGINT) as a flag for the training loop, answered at once.

    The first SIGINT sets ``pressed`` and the loop stops at the end of the chunk (after a
    checkpoint there), so a checkpoint is either not begun or complete and counted, and a SIGINT
    that lands while Python runs inside a JAX callback (compilation cache, checkpointing threads)
    is not lost. A second Ctrl-C raises KeyboardInterrupt (when the main thread next runs Python).
    Python runs a signal handler only between bytecodes of the main thread, which may sit in a
    compiled chunk for minutes: so the C-level handler also writes the signal to a pipe
    (``signal.set_wakeup_fd``) that a helper thread reads, printing ``line()`` within
    milliseconds. Only in the main thread (elsewhere Python delivers no signals and this does
    nothing); ``close()`` puts the previous handler and wakeup fd back."""

    def __init__(self, line: Callable[[], str], say: Optional[Callable[[str], None]]):
        self.pressed: List[bool] = []
        self._restore = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(*_):
            if self.pressed:
                raise KeyboardInterrupt
            self.pressed.append(True)

        self._old = signal.signal(signal.SIGINT, handler)
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        try:
            self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        except ValueError:
            self._old_fd = None
        self._thread = threading.Thread(target=self._watch, args=(line, say), daemon=True)
        self._thread.start()
        self._restore = True

    def _watch(self, line, say) -> None:
        told = False
        while True:
            b = os.read(self._r, 1)
            if not b or b == b"\0":
                return
            if b[0] == signal.SIGINT and not told and say is not None:
                told = True
                try:
                    say(line())
                except Exception:  # never let the message kill the watcher
                    pass

    def close(self) -> None:
        if not self._restore:
            return
        self._restore = None
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL if self._old is None else self._old)
        os.write(self._w, b"\0")
        self._thread.join(1.0)
        os.close(self._w)
        os.close(self._r)


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
