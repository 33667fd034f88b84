"""What every run directory shares: config.json, metrics.jsonl, the resume check, checkpoints.

A run kind writes ``config.json`` with ``write_config``, logs rows through ``MetricsLog``,
checkpoints through ``Checkpoints`` (its settings inherit ``CheckpointSettings``) and resumes with::

    saved = check_resume(cfg, out)        # the saved config; ValueError naming what differs
    state, ck = restore_latest(out, state, resume)
    rows = read_rows(out, upto(step of ck)) if ck else []    # the log cut back to the checkpoint

so after a resume each logged step appears exactly once, and the rows and final parameters equal
those of a run never stopped (keys depend only on the seed and the step; ``chunk_size`` keeps the
chunks of a resumed run those of the uninterrupted one). A run killed before its first checkpoint
resumes from step 0 with an empty log. Checkpoints are written every ``checkpoint_every`` steps,
after ``checkpoint_minutes`` of wall clock (``host_loop.host_loop``) and at the end, atomically
(``gfnem_jax.checkpoint``); the newest ``keep_checkpoints`` are kept.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from gfnem_jax import checkpoint
from gfnem_jax.config import Settings, setting

CONFIG = "config.json"
METRICS = "metrics.jsonl"
# settings a resumed run may change (any other difference is refused, naming the setting)
RESUMABLE = ("steps", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "tensorboard")


@dataclasses.dataclass(frozen=True)
class CheckpointSettings(Settings):
    """The checkpoint policy of a run kind (its settings class inherits these fields)."""

    checkpoint_every: int = setting(0, "steps between checkpoints (0 = by time and at the end "
                                    "only)", min=0)
    checkpoint_minutes: float = setting(5.0, "also checkpoint after the first logged chunk ending "
                                        "this many minutes after the last checkpoint (0 = off)",
                                        min=0)
    keep_checkpoints: int = setting(3, "keep only the newest K checkpoints (0 = all)", min=0)
    tensorboard: bool = setting(False, "also write the logged metrics as TensorBoard event files "
                                "in OUT/tensorboard (tensorboardX)")

    def check_processes(self, count: int) -> None:
        """Refuse a run over ``count`` processes (jax.distributed) that this kind cannot split
        (ValueError naming the setting); every kind here runs over several."""


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _primary() -> bool:
    from gfnem_jax import distributed
    return distributed.is_primary()


def write_config(out: str, cfg: Dict[str, Any]) -> None:
    """Write OUT/config.json (atomically; keys sorted), creating OUT (primary process only)."""
    if not _primary():
        return
    os.makedirs(out, exist_ok=True)
    _write_atomic(os.path.join(out, CONFIG), json.dumps(cfg, indent=2, sort_keys=True))


def read_config(out: str) -> Optional[Dict[str, Any]]:
    """The saved config of OUT, or None if it has none (or it is not a JSON object)."""
    try:
        with open(os.path.join(out, CONFIG)) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def load_config(run: str) -> Dict[str, Any]:
    """The config.json of a run directory (``gfnem sample``, ``parse``, ``eval``); ValueError
    naming ``run`` when it has none or it is unreadable."""
    cfg = read_config(run)
    if cfg is None:
        raise ValueError(f"run {run!r} holds no {CONFIG} (not a gfnem run directory)")
    return cfg


def config_problem(run: str) -> Optional[str]:
    """Why the config.json of run directory ``run`` cannot be read (one phrase naming it), or
    None when it reads as a JSON object."""
    path = os.path.join(run, CONFIG)
    if not os.path.isfile(path):
        return f"it holds no {CONFIG} (not a gfnem run directory)"
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        return f"its {CONFIG} cannot be read ({e.__class__.__name__})"
    except ValueError as e:
        return f"its {CONFIG} is damaged (not JSON: {e})"
    return None if isinstance(cfg, dict) else f"its {CONFIG} is damaged (not a JSON object)"


_MISSING = object()


def _differences(saved: Dict[str, Any], new: Dict[str, Any], allowed: Iterable[str],
                 prefix: str = "", defaults: Optional[Dict[str, Any]] = None) -> List[str]:
    out = []
    for k in sorted(set(saved) | set(new)):
        if prefix + k in allowed:
            continue
        a, b = saved.get(k, _MISSING), new.get(k, _MISSING)
        if a is _MISSING and defaults is not None:
            a = defaults.get(k, _MISSING)  # a setting added after the run was written
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, allowed, prefix + k + ".")
        elif a != b:
            show = lambda v: "unset" if v is _MISSING else repr(v)
            out.append(f"{k} (saved {show(a)}, now {show(b)})")  # a setting's own name
    return out


def check_resume(cfg: Dict[str, Any], out: str,
                 allowed: Tuple[str, ...] = RESUMABLE,
                 defaults: Optional[Dict[str, Any]] = None,
                 upgrade: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
                 ) -> Dict[str, Any]:
    """The saved config of OUT if ``cfg`` may resume it; else ValueError naming each setting that
    differs (only ``allowed`` may change). OUT needs a config.json, not a checkpoint: a run
    killed before its first checkpoint resumes from step 0. ``defaults`` (top-level settings):
    a setting the saved config lacks (a run written by an older version) counts as its default;
    ``upgrade`` renames settings saved under an earlier name (``Settings.upgrade``)."""
    saved = read_config(out)
    if saved is None:
        raise ValueError(f"resume: {out!r} holds no run to resume (no readable {CONFIG})")
    if upgrade is not None:
        saved = upgrade(saved)
    diff = _differences(saved, cfg, allowed, defaults=defaults)
    if diff:
        raise ValueError(f"resume: settings differ from the saved run in {'; '.join(diff)} "
                         f"(only {', '.join(allowed)} may change)")
    return saved


def restore_latest(out: str, like: Any, resume: bool) -> Tuple[Any, Optional[str]]:
    """(state, checkpoint path): the newest sound checkpoint of OUT (``checkpoint.verify``)
    restored with the structure of ``like`` when resuming and there is one; else (``like``,
    None). A damaged newer checkpoint is passed over with one line on stderr naming it; none
    sound is a ValueError."""
    if not resume:
        return like, None
    return checkpoint.restore_newest(out, like, skipped=report_skipped)


def report_skipped(path: str, why: str) -> None:
    """One line on stderr: a damaged checkpoint passed over for an older one."""
    import sys
    sys.stderr.write(f"gfnem: checkpoint {path} is damaged ({why}); using the one before it\n")


def check_steps(steps: int, done: int, out: str) -> None:
    """A resumed run must not be asked for fewer steps than its checkpoint has."""
    if done > steps:
        raise ValueError(f"steps must be >= the {done} steps the run in {out!r} already has, "
                         f"got {steps}")


def chunk_size(steps: int, done: int, log_every: int) -> int:
    """Steps per chunk: the largest divisor of ``steps`` (and of ``done``) not above
    ``log_every``; the same for a run resumed at a chunk boundary as for the uninterrupted run."""
    from gfnem_jax.host_loop import pick_chunk
    return pick_chunk(math.gcd(steps, done), log_every)


def upto(step: int) -> Callable[[Dict[str, Any]], bool]:
    """Row filter: the rows logged at or before ``step``."""
    return lambda r: r.get("step", 0) <= step


def read_rows(out: str, keep: Callable[[Dict[str, Any]], bool] = lambda r: True,
              strict: bool = False) -> List[Dict[str, Any]]:
    """The rows of OUT/metrics.jsonl for which ``keep`` holds (a torn last line is dropped).

    strict (a resume, which keeps these rows): a damaged line before the last, or no file at all,
    is a ValueError naming the file (the run's earlier rows would be lost)."""
    path = os.path.join(out, METRICS)
    if not os.path.isfile(path):
        if strict:
            raise ValueError(f"run {out!r}: its {METRICS} is missing (a checkpoint without its rows)")
        return []
    with open(path, "rb") as f:
        lines = [b for b in f.read().split(b"\n") if b.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            r = json.loads(line.decode("utf-8"))
        except ValueError:
            r = None
        if not isinstance(r, dict):
            if strict and i < len(lines) - 1:
                raise ValueError(f"run {out!r}: line {i + 1} of its {METRICS} is damaged (not a "
                                 f"JSON object); nothing was changed")
            continue
        if keep(r):
            rows.append(r)
    return rows


class MetricsLog:
    """OUT/metrics.jsonl: starts as ``rows`` (written atomically; [] = empty), then each
    ``write(row)`` appends one JSON line and flushes. ``rows`` holds every row of the file.
    Only the primary process writes the file (the others keep ``rows`` in memory)."""

    def __init__(self, out: str, rows: Optional[List[Dict[str, Any]]] = None,
                 tensorboard: bool = False):
        self.path = os.path.join(out, METRICS)
        self.rows = list(rows or [])
        self._f = self._tb = None
        if _primary():
            os.makedirs(out, exist_ok=True)
            _write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
            self._f = open(self.path, "a")
            if tensorboard:
                from tensorboardX import SummaryWriter  # a maintained event-file writer
                self._tb = SummaryWriter(os.path.join(out, "tensorboard"))

    def write(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        self.board([row])

    def board(self, rows: List[Dict[str, Any]]) -> None:
        """Send rows already in the file to TensorBoard (when it is on)."""
        if self._tb is None:
            return
        for row in rows:
            if not isinstance(row.get("step"), int):
                continue
            prefix = f"{row['method']}/" if isinstance(row.get("method"), str) else ""
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(prefix + k, float(v), row["step"])
        self._tb.flush()

    def wall_offset(self) -> float:
        """wall_s of the last row that has one (0.0 if none): a resumed run keeps counting."""
        for r in reversed(self.rows):
            if isinstance(r.get("wall_s"), (int, float)):
                return float(r["wall_s"])
        return 0.0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Checkpoints:
    """A run kind's checkpoint policy: ``loop_kwargs()`` for ``host_loop.host_loop`` (every
    ``checkpoint_every`` steps, after ``checkpoint_minutes``), ``save(state)`` at the end (a step
    already saved is not written twice); the newest ``keep_checkpoints`` are kept.

    extras: () -> {name: array} saved with each checkpoint (``checkpoint.load_extra``).
    last: the step of the checkpoint the run resumed from (None for a fresh run).
    """

    def __init__(self, out: str, s: CheckpointSettings,
                 extras: Optional[Callable[[], Dict[str, np.ndarray]]] = None,
                 last: Optional[int] = None):
        self.out, self.s, self.extras, self.last = out, s, extras, last

    def save(self, state) -> None:
        from gfnem_jax import distributed
        step = int(distributed.to_local(state.step))
        if step == self.last:
            return
        checkpoint.save(self.out, state, keep=self.s.keep_checkpoints or None,
                        extras=None if self.extras is None else self.extras())
        self.last = step

    def loop_kwargs(self) -> Dict[str, Any]:
        return dict(on_checkpoint=self.save, checkpoint_every=self.s.checkpoint_every,
                    checkpoint_minutes=self.s.checkpoint_minutes, last_checkpoint=self.last)
