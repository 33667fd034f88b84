"""The one run outline: every run kind is an ``Experiment``, and ``run`` drives it.

A run kind (a module of ``gfnem_jax.experiments``, registered once in
``gfnem_jax.experiments.KINDS``) declares its settings (a ``config.Settings`` dataclass inheriting
``run_dir.CheckpointSettings``, composed from the shared groups) and a function
``build(settings) -> Experiment``: its initial loop state, its compiled chunk of
``loop.make_step`` steps, its batches, evaluation, summary and the files it writes. ``run`` owns
everything else, once for every kind:

    check the resume -> restore the newest checkpoint -> check the steps -> write config.json and
    the kind's input files -> pick the logging interval and the compiled chunk -> checkpoints +
    metrics.jsonl -> ``host_loop.host_loop`` (progress, Ctrl-C, the non-finite stop,
    multi-process) -> the last checkpoint -> the kind's summary files

A logging interval (``Experiment.chunk``, by default the largest divisor of the steps not above
``log_every``) is run as several compiled chunks (``host_loop.first_chunk``, smaller when a
chunk takes more than a few seconds) so the bar moves and Ctrl-C is answered within a chunk; the
chunks' metrics are concatenated into the interval's, so the rows do not depend on the chunk.
A checkpoint written mid-interval (Ctrl-C) carries the unfinished interval's metrics
(``PENDING``), and a resume from it logs the rows of a run never stopped.

``build`` must not write anything: a refused resume leaves the run folder as it was.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from gfnem_jax import checkpoint, distributed as D, host_loop, run_dir

Row = Dict[str, Any]
PENDING = "interval_pending."  # checkpoint extras: the metrics of an unfinished interval


@dataclasses.dataclass
class Experiment:
    """What a run kind hands the driver (``build(settings) -> Experiment``).

    Attributes:
      name: the progress bar's label (``"hypergrid/tb"``).
      settings: the run's settings; the driver reads ``steps``, ``log_every`` and the checkpoint
        policy (``run_dir.CheckpointSettings``) from it.
      config: the content of ``config.json`` (what a resume must match).
      state: the ``loop.LoopState`` at step 0 (also the structure a checkpoint is restored into).
      make_chunk: ``n -> run_chunk(state, data) -> (state, metrics[n])``, ``n`` steps of
        ``loop.make_step`` in one compiled ``lax.scan`` (``loop.make_chunk``).
      data_fn: ``chunk index -> data`` argument of each compiled chunk (None: no data
        argument).
      summarize: ``metrics of a logging interval -> dict`` merged into its logged row.
      evaluate: ``state -> dict`` merged into each logged row (exact metrics, held-out scores).
      log_rows: ``(metrics of the interval, its row) -> rows to write`` (default: the row
        itself).
      first_rows: ``(state, rows kept from an earlier run) -> rows written before them`` (rows
        computed before the first chunk: baselines, a step-0 evaluation when nothing is kept);
        resumed mid-interval, the state's ``step`` is the step the rows resume from (the
        interval's start: steps after it are logged in the next row).
      kept_rows: ``(rows of an earlier run's metrics.jsonl, step of its checkpoint) -> the rows a
        resume keeps`` (default: those logged at or before the checkpoint's step).
      chunk: ``step at which logging starts -> steps per logging interval`` (default
        ``run_dir.chunk_size``); every divisor of it must be a valid compiled chunk.
      split: run an interval as several compiled chunks (``host_loop.first_chunk``); False keeps
        one compiled chunk per interval (a kind whose numbers depend on the scan length).
      extras: ``() -> {name: array}`` saved with each checkpoint; ``restore_extras(ck)`` reads
        them back when resuming from checkpoint ``ck``.
      write_inputs: ``out -> None``: files describing the run's inputs (data, vocabulary), written
        beside config.json (primary process only).
      finish: ``(state, rows, out, primary) -> dict``: the run's summary (and, when ``primary``,
        its files); the driver returns it under "summary".
      resume_defaults: settings a saved config may lack (written by an older version): they count
        as these defaults (default: every setting's declared default).
      postfix: logged keys shown on the progress bar.
      report: ``result of run -> dict``: the one JSON line ``gfnem train`` prints at the end
        (default: the last logged row).
    """

    name: str
    settings: Any
    config: Dict[str, Any]
    state: Any
    make_chunk: Callable[[int], Callable]
    data_fn: Optional[Callable[[int], Any]] = None
    summarize: Optional[Callable[[Dict[str, Any]], Row]] = None
    evaluate: Optional[Callable[[Any], Row]] = None
    log_rows: Optional[Callable[[Dict[str, Any], Row], List[Row]]] = None
    first_rows: Optional[Callable[[Any, List[Row]], List[Row]]] = None
    kept_rows: Optional[Callable[[List[Row], int], List[Row]]] = None
    chunk: Optional[Callable[[int], int]] = None
    split: bool = True
    extras: Optional[Callable[[], Dict[str, Any]]] = None
    restore_extras: Optional[Callable[[str], None]] = None
    write_inputs: Optional[Callable[[str], None]] = None
    finish: Optional[Callable[[Any, List[Row], str, bool], Dict[str, Any]]] = None
    resume_defaults: Optional[Dict[str, Any]] = None
    postfix: Sequence[str] = ("loss",)
    report: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None


def check_resume(exp: Experiment, out: str) -> None:
    """ValueError naming each setting that differs from the run saved in ``out``."""
    defaults = exp.resume_defaults
    if defaults is None and hasattr(exp.settings, "defaults"):
        defaults = exp.settings.defaults()
    run_dir.check_resume(exp.config, out, defaults=defaults,
                         upgrade=getattr(exp.settings, "upgrade", None))


def run(exp: Experiment, out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Drive ``exp`` in run folder ``out``; returns {"final": the last logged row, "summary":
    ``exp.finish``'s dict (or {}), "state": the final state (this process's replica)}.

    resume: continue the run in ``out`` from its newest checkpoint (step 0 if it has none) up to
    ``settings.steps``: the rows and the final state equal those of a run never stopped (keys
    depend only on the seed and the step; a resumed run keeps the logging intervals of the
    uninterrupted one, and a checkpoint written mid-interval carries that interval's metrics)."""
    s = exp.settings
    t0 = time.perf_counter()
    if resume:
        check_resume(exp, out)
    state, ck = run_dir.restore_latest(out, exp.state, resume)
    done = int(D.to_local(state.step))
    run_dir.check_steps(s.steps, done, out)
    if ck is not None and exp.restore_extras is not None:
        exp.restore_extras(ck)
    pending = _load_pending(ck) if ck is not None else None
    start = done - (len(next(iter(pending.values()))) if pending else 0)
    kept: List[Row] = []
    if ck is not None:  # before anything is written: damaged rows stop the resume unchanged
        earlier = run_dir.read_rows(out, strict=True)
        kept = (exp.kept_rows(earlier, done) if exp.kept_rows is not None
                else [r for r in earlier if run_dir.upto(done)(r)])
    run_dir.write_config(out, exp.config)
    primary = D.is_primary()
    if primary and exp.write_inputs is not None:
        exp.write_inputs(out)
    interval = (exp.chunk(start) if exp.chunk is not None
                else run_dir.chunk_size(s.steps, start, s.log_every))
    chunk = host_loop.first_chunk(interval) if exp.split else interval
    run_chunk = [exp.make_chunk(chunk)]  # handed over below: host_loop frees it when unused
    unfinished: List[Optional[Dict[str, Any]]] = [None]

    def extras():
        ex = dict(exp.extras()) if exp.extras is not None else {}
        ex.update({PENDING + k: v for k, v in (unfinished[0] or {}).items()})
        return ex

    cks = run_dir.Checkpoints(out, s, extras=extras, last=done if ck else None)
    chunk_metrics: List[Dict[str, Any]] = [{}]

    def summarize(m):
        chunk_metrics[0] = m
        return exp.summarize(m) if exp.summarize is not None else {}

    at = D.to_local(state)
    if pending and hasattr(at, "_replace"):  # the rows resume at the unfinished interval's start
        at = at._replace(step=np.asarray(start, np.asarray(at.step).dtype))
    # rows before the first step: with no kept rows they are computed after the first chunk has
    # run (from the state before it), so that the training chunk, the largest program, compiles
    # before the evaluation's programs and its compilation peaks on the smaller heap
    defer = exp.first_rows is not None and not kept
    first = exp.first_rows(at, kept) if exp.first_rows is not None and not defer else []
    with run_dir.MetricsLog(out, first + kept, tensorboard=getattr(s, "tensorboard", False)) as log:
        log.board(first)

        def first_rows():
            if progress and primary:
                _say(f"{exp.name}: computing the rows before the first step (compiling them "
                     f"first) ...")
            for r in exp.first_rows(at, kept):
                log.write(r)

        def on_log(row):
            rows = exp.log_rows(chunk_metrics[0], row) if exp.log_rows is not None else [row]
            for r in rows:
                log.write(r)

        state = host_loop.host_loop(
            state, run_chunk.pop(), s.steps - done, chunk, data_fn=exp.data_fn, summarize=summarize,
            evaluate=exp.evaluate, on_log=on_log, progress=progress, desc=exp.name,
            postfix=tuple(exp.postfix), interval=interval, pending=pending,
            make_chunk=exp.make_chunk if exp.split else None,
            on_pending=lambda m: unfinished.__setitem__(0, m),
            after_first_chunk=first_rows if defer else None,
            wall_offset=log.wall_offset() + time.perf_counter() - t0, **cks.loop_kwargs())
        if defer and not log.rows:  # no chunk ran (nothing left to train)
            first_rows()
    unfinished[0] = None
    cks.save(state)  # collective with several processes
    state = D.to_local(state)
    rows = log.rows
    summary = exp.finish(state, rows, out, primary) if exp.finish is not None else {}
    return {"final": rows[-1] if rows else {}, "summary": summary, "state": state}


def _load_pending(ck: str) -> Optional[Dict[str, np.ndarray]]:
    """The metrics of the unfinished interval saved with checkpoint ``ck`` (None: it was
    written at the end of an interval)."""
    names = sorted(f[:-len(".npy")] for f in os.listdir(ck)
                   if f.startswith(PENDING) and f.endswith(".npy"))
    return {n[len(PENDING):]: checkpoint.load_extra(ck, n) for n in names} or None


def _say(msg: str) -> None:
    import sys
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def restore_run(run: str, like: Any) -> Any:
    """The newest checkpoint of a finished run folder restored into the structure of ``like``
    (``gfnem sample``, ``parse``, ``eval``); ValueError naming the run when it holds none."""
    state, ck = checkpoint.restore_newest(run, like, skipped=run_dir.report_skipped)
    if ck is None:
        raise ValueError(f"run {run!r} holds no checkpoint")
    return state
