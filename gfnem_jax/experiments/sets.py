"""Set-generation task (DIV), declared once: settings, environment, modes."""
from __future__ import annotations

import dataclasses
import math

from gfnem_jax.config import Settings, setting
from gfnem_jax.experiments import runner
from gfnem_jax.envs.sets import SetGeneration

NAME = "sets"
HELP = ("set generation: pick k of N elements, reward from seeded random unary + pairwise weights "
        "(da Silva et al. 2024)")
MAX_STATES = 100_000
N_MODES = 10


def num_states(size: int, k: int) -> int:
    return sum(math.comb(size, j) for j in range(k + 1))


@dataclasses.dataclass(frozen=True)
class SetsSettings(Settings):
    set_size: int = setting(12, "size N of the ground set (DIV uses 32)", min=2)
    k: int = setting(6, "number of elements to choose, 1 <= k <= N (DIV uses 16)", min=1)
    reward_seed: int = setting(0, "seed of the random reward weights", min=0, max=2 ** 31 - 1)
    reward_temperature: float = setting(1.0, "log R = score / temperature (lower = sharper modes)", gt=0)

    def check(self):
        if self.k > self.set_size:
            raise ValueError(f"k must be in [1, set_size={self.set_size}], got {self.k}")
        n = num_states(self.set_size, self.k)
        if n > MAX_STATES:
            raise ValueError(f"set_size {self.set_size} with k {self.k} has {n} states; exact metrics "
                             f"allow at most {MAX_STATES} (e.g. set_size 12 and k 6, or 16 and 4)")




def build_env(s: SetsSettings) -> SetGeneration:
    return SetGeneration(size=s.set_size, k=s.k, seed=s.reward_seed, temperature=s.reward_temperature)


def mode_indices(env: SetGeneration):
    """State indices (in env.all_states order) of the N_MODES highest-reward terminal sets."""
    from gfnem_jax.metrics import top_reward_terminals
    return top_reward_terminals(env, env.terminal_indices(), N_MODES)


Settings = runner.task_settings(NAME, SetsSettings)  # the environment's and the training settings
build, sample, sample_row = runner.experiment, runner.sample, runner.sample_row
memory_estimate = runner.memory_estimate
