"""Checkpoints (orbax): the whole TrainState, so a run can resume exactly where it stopped."""
from __future__ import annotations

import os
from typing import Any, Optional



def _dir(root: str) -> str:
    return os.path.join(os.path.abspath(root), "checkpoint")


def save(root: str, state: Any) -> str:
    """Write ``state`` to ROOT/checkpoint/step_N and return the path (older steps are kept)."""
    step = int(state.step) if hasattr(state, "step") else 0
    import orbax.checkpoint as ocp  # imported here: it costs ~1.7 s of start-up
    path = os.path.join(_dir(root), f"step_{step}")
    ck = ocp.StandardCheckpointer()
    ck.save(path, state, force=True)
    ck.wait_until_finished()
    return path


def latest(root: str) -> Optional[str]:
    d = _dir(root)
    if not os.path.isdir(d):
        return None
    steps = [int(n.split("_", 1)[1]) for n in os.listdir(d) if n.startswith("step_")
             and n.split("_", 1)[1].isdigit() and os.path.isdir(os.path.join(d, n))]
    return os.path.join(d, f"step_{max(steps)}") if steps else None


def restore(path: str, like: Any) -> Any:
    """Restore the pytree saved at ``path`` with the structure (and dtypes) of ``like``."""
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer().restore(path, like)
