"""Checkpoints (orbax): the whole loop state, so a run can resume exactly where it stopped.

ROOT/checkpoint/step_N is one checkpoint: the orbax tree of the state, any extra arrays
(NAME.npy, ``extras``), MANIFEST.json (the size and SHA-256 of every other file) and the marker
file COMMIT (the step and the manifest's own SHA-256). Writes are atomic: everything goes into ROOT/checkpoint/.tmp_step_N, COMMIT is
written last, and only then is the directory renamed to step_N. ``latest`` ignores temporaries
and any step directory without COMMIT, so a run killed while writing a checkpoint resumes from
the previous one; the next ``save`` removes the debris.

``verify(path)`` checks a checkpoint against its manifest (a file missing, of another size or
with other bytes); ``restore_newest`` restores the newest checkpoint that verifies and reads,
reporting each newer one it skips, so a damaged checkpoint is never loaded and never stops a
resume while an older one is sound. (A checkpoint written before manifests existed has none: it
is trusted as far as it reads.)
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

MARKER = "COMMIT"
MANIFEST = "MANIFEST.json"
TMP = ".tmp_"


def _dir(root: str) -> str:
    return os.path.join(os.path.abspath(root), "checkpoint")


def _step_of(name: str) -> Optional[int]:
    if name.startswith("step_") and name[5:].isdigit():
        return int(name[5:])
    return None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def steps(root: str) -> List[int]:
    """Steps of the complete checkpoints in ROOT (step directories holding COMMIT), ascending."""
    d = _dir(root)
    if not os.path.isdir(d):
        return []
    out = []
    for name in os.listdir(d):
        n = _step_of(name)
        if n is not None and os.path.isfile(os.path.join(d, name, MARKER)):
            out.append(n)
    return sorted(out)


def save(root: str, state: Any, keep: Optional[int] = None,
         extras: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Write ``state`` to ROOT/checkpoint/step_N atomically and return that path.

    keep: keep only the newest ``keep`` complete checkpoints (None or 0 = all).
    extras: arrays saved beside the state as NAME.npy (read back with ``load_extra``).
    """
    import orbax.checkpoint as ocp  # imported here: it costs ~1.7 s of start-up
    from gfnem_jax import distributed as D
    step = int(D.to_local(state.step)) if hasattr(state, "step") else 0
    d = _dir(root)
    tmp = os.path.join(d, f"{TMP}step_{step}")
    final = os.path.join(d, f"step_{step}")
    primary, multi = D.is_primary(), D.process_count() > 1
    if primary:
        os.makedirs(d, exist_ok=True)
        _clean(d)
    if multi:
        _barrier(f"ckpt_clean_{step}")
    ck = ocp.StandardCheckpointer()
    ck.save(tmp, state, force=True)  # collective with several processes: each writes its part
    ck.wait_until_finished()
    if multi:  # every process's part is on disk before the manifest hashes it
        _barrier(f"ckpt_written_{step}")
    if not primary:
        _barrier(f"ckpt_done_{step}")
        return final
    for name, arr in (extras or {}).items():
        with open(os.path.join(tmp, name + ".npy"), "wb") as f:
            np.save(f, np.asarray(arr))
            f.flush()
            os.fsync(f.fileno())
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(_manifest(tmp), f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(tmp, MARKER), "w") as f:  # the step, then the manifest's own checksum
        f.write(f"{step}\n{_sha256(os.path.join(tmp, MANIFEST))}\n")
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(final):  # the same step again: move the old one aside, then replace it
        old = os.path.join(d, f"{TMP}old_step_{step}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(d)
    if keep:
        for n in steps(root)[:-keep]:
            shutil.rmtree(os.path.join(d, f"step_{n}"), ignore_errors=True)
    if multi:
        _barrier(f"ckpt_done_{step}")
    return final


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _clean(d: str) -> None:
    """Remove what killed writes left behind: temporaries and step directories without COMMIT."""
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if name.startswith(TMP) or (_step_of(name) is not None
                                    and not os.path.isfile(os.path.join(p, MARKER))):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.remove(p)
                except OSError:
                    pass


def latest(root: str) -> Optional[str]:
    """Path of the newest complete checkpoint in ROOT, or None."""
    s = steps(root)
    return os.path.join(_dir(root), f"step_{s[-1]}") if s else None


def restore(path: str, like: Any = None) -> Any:
    """Restore the pytree saved at ``path`` with the structure (and dtypes) of ``like``
    (None: orbax's own nested dicts / lists of arrays). A read that fails leaves no read
    running behind it (``_drained_loops``)."""
    import orbax.checkpoint as ocp
    ck = ocp.StandardCheckpointer()
    with _drained_loops():
        return ck.restore(path) if like is None else ck.restore(path, like)


@contextlib.contextmanager
def _drained_loops():
    """While open, orbax's synchronous calls run their coroutine in a fresh event loop that, when
    the coroutine fails, first lets every other task of the loop finish (their exceptions
    retrieved) before closing it. Orbax's own closes the loop at once: the array reads still in
    flight then complete into a closed loop, and each prints a "RuntimeError: Event loop is
    closed" or "Exception ignored in <coroutine ...>" traceback (at once or at exit)."""
    from orbax.checkpoint._src import asyncio_utils as au
    own = getattr(au, "_run_sync_via_new_loop", None)
    if own is None:  # another orbax: its own loop handling
        yield
        return

    def run(coro):
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(coro)
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    au._run_sync_via_new_loop = run
    try:
        yield
    finally:
        au._run_sync_via_new_loop = own


def load_extra(path: str, name: str) -> Optional[np.ndarray]:
    """The array ``name`` saved with the checkpoint at ``path`` (``save``'s extras), or None."""
    p = os.path.join(path, name + ".npy")
    return np.load(p) if os.path.isfile(p) else None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(path: str) -> List[str]:
    """Every file below ``path`` but the manifest and the marker, as relative paths, sorted."""
    out = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            if rel not in (MANIFEST, MARKER):
                out.append(rel)
    return sorted(out)


def _manifest(path: str) -> Dict[str, List[Any]]:
    """{relative path: [size in bytes, SHA-256]} of every file of a checkpoint being written."""
    return {rel: [os.path.getsize(os.path.join(path, rel)), _sha256(os.path.join(path, rel))]
            for rel in _files(path)}


def verify(path: str) -> Optional[str]:
    """None if the checkpoint at ``path`` is intact, else why not (one phrase, naming the file):
    a marker that does not name its step, a manifest missing or not matching the marker's
    checksum, a file of the manifest missing, of another size or with other bytes, or a file it
    does not list. A checkpoint whose marker holds only the step (written before manifests
    existed) verifies."""
    try:
        with open(os.path.join(path, MARKER), "rb") as f:
            lines = f.read(256).decode("utf-8", "replace").split()
    except OSError:
        return f"its {MARKER} marker is missing"
    step = _step_of(os.path.basename(os.path.normpath(path)))
    if not lines or (step is not None and lines[0] != str(step)):
        return f"its {MARKER} marker does not name step {step}"
    mpath = os.path.join(path, MANIFEST)
    if len(lines) == 1:  # written before manifests existed
        return None
    if not os.path.isfile(mpath):
        return f"its {MANIFEST} is missing"
    if _sha256(mpath) != lines[1]:
        return f"its {MANIFEST} does not match its checksum"
    try:
        with open(mpath) as f:
            manifest = json.load(f)
        items = [(str(k), int(v[0]), str(v[1])) for k, v in manifest.items()]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return f"its {MANIFEST} is unreadable"
    for rel, size, digest in items:
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"its file {rel} is missing"
        if os.path.getsize(full) != size:
            return f"its file {rel} has {os.path.getsize(full)} bytes, not {size}"
        if _sha256(full) != digest:
            return f"its file {rel} does not match its checksum"
    extra = sorted(set(_files(path)) - {rel for rel, _, _ in items})
    if extra:
        return f"it holds a file its manifest does not list ({extra[0]})"
    return None


def restore_newest(root: str, like: Any,
                   skipped: Optional[Callable[[str, str], None]] = None) -> Tuple[Any, Optional[str]]:
    """(state, path) of the newest checkpoint of ROOT that verifies and restores into the
    structure of ``like``; ``skipped(path, why)`` is then called for each newer one passed over.
    (``like``, None) when ROOT holds no checkpoint; ValueError naming ROOT and its newest
    checkpoint when it holds some and none is sound (``skipped`` not called)."""
    bad = []
    for n in reversed(steps(root)):
        path = os.path.join(_dir(root), f"step_{n}")
        why = verify(path)
        if why is None:
            try:
                state = restore(path, like)
            except Exception as e:  # noqa: BLE001 -- any failure to read is a damaged checkpoint
                why = f"it cannot be read ({_read_error(e)})"
            else:
                for p, w in bad if skipped is not None else ():
                    skipped(p, w)
                return state, path
        bad.append((path, why))
    if bad:
        raise ValueError(f"run {os.path.abspath(root)!r}: no checkpoint is sound (newest: "
                         f"{bad[0][0]}: {bad[0][1]})")
    return like, None


def _read_error(e: BaseException) -> str:
    """One short phrase for a failed restore: the innermost cause's type and the first words of
    its message (tensorstore's name the array and the failure, then the file and a long spec)."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    msg = str(e).splitlines()[0] if str(e) else ""
    msg = msg.split(" in OCDBT database")[0].split(" See full TensorStore")[0]
    if len(msg) > 120:
        msg = msg[:117] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
