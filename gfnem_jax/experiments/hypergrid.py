"""HyperGrid task, declared once: its settings, the environment they build, its modes."""
from __future__ import annotations

import dataclasses

from gfnem_jax.config import Settings, setting
from gfnem_jax.experiments import runner
from gfnem_jax.envs.hypergrid import HyperGrid

NAME = "hypergrid"
HELP = "HyperGrid {0..H-1}^d with the standard reward (Bengio et al. 2021)"
MAX_CELLS = 5_000_000


@dataclasses.dataclass(frozen=True)
class HyperGridSettings(Settings):
    ndim: int = setting(2, "number of dimensions d", min=1)
    height: int = setting(8, "side length H of the grid", min=2)
    r0: float = setting(1e-3, "base reward R0 (0.001 is the hard setting)", gt=0)
    r1: float = setting(0.5, "reward of the outer band R1", min=0)
    r2: float = setting(2.0, "reward of the modes R2", min=0)

    def check(self):
        if self.height ** self.ndim > MAX_CELLS:
            raise ValueError(f"height {self.height} with ndim {self.ndim} has "
                             f"{self.height ** self.ndim} cells; exact metrics allow at most 5e6")




def build_env(s: HyperGridSettings) -> HyperGrid:
    return HyperGrid(**s.to_dict())


def mode_indices(env: HyperGrid):
    """int[M]: state indices (in env.all_states order) of the terminal modes."""
    import jax
    import numpy as np
    # one jitted program (cached on disk) instead of ~20 eager ops at every start
    return np.flatnonzero(np.asarray(jax.jit(env.mode_mask)())) + env.height ** env.ndim


Settings = runner.task_settings(NAME, HyperGridSettings)  # the environment's and the training settings
build, sample, sample_row = runner.experiment, runner.sample, runner.sample_row
memory_estimate = runner.memory_estimate
