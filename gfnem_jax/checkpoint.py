"""Checkpoints (orbax): the whole loop state, so a run can resume exactly where it stopped.

ROOT/checkpoint/step_N is one checkpoint: the orbax tree of the state, any extra arrays
(NAME.npy, ``extras``) and the marker file COMMIT. Writes are atomic: everything goes into
ROOT/checkpoint/.tmp_step_N, COMMIT is written last, and only then is the directory renamed to
step_N. ``latest`` ignores temporaries and any step directory without COMMIT, so a run killed
while writing a checkpoint resumes from the previous one; the next ``save`` removes the debris.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np

MARKER = "COMMIT"
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
    if not primary:
        _barrier(f"ckpt_done_{step}")
        return final
    for name, arr in (extras or {}).items():
        with open(os.path.join(tmp, name + ".npy"), "wb") as f:
            np.save(f, np.asarray(arr))
            f.flush()
            os.fsync(f.fileno())
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(f"{step}\n")
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
    (None: orbax's own nested dicts / lists of arrays)."""
    import orbax.checkpoint as ocp
    ck = ocp.StandardCheckpointer()
    return ck.restore(path) if like is None else ck.restore(path, like)


def load_extra(path: str, name: str) -> Optional[np.ndarray]:
    """The array ``name`` saved with the checkpoint at ``path`` (``save``'s extras), or None."""
    p = os.path.join(path, name + ".npy")
    return np.load(p) if os.path.isfile(p) else None
