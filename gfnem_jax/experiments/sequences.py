"""Sequence-design task (DIV), declared once: settings, environment, modes."""
from __future__ import annotations

import dataclasses

from gfnem_jax.config import Settings, setting
from gfnem_jax.experiments import runner
from gfnem_jax.envs.sequence_design import SequenceDesign

NAME = "sequences"
HELP = ("sequence design: length-L strings over V tokens, reward from seeded position + neighbour "
        "weights (da Silva et al. 2024)")
MAX_STATES = 400_000
N_MODES = 10


def num_states(length: int, vocab: int) -> int:
    return sum(vocab ** n for n in range(length + 1))


@dataclasses.dataclass(frozen=True)
class SequencesSettings(Settings):
    length: int = setting(6, "sequence length L", min=1)
    vocab: int = setting(4, "alphabet size V (DIV uses 8)", min=2)
    reward_seed: int = setting(0, "seed of the random reward weights", min=0, max=2 ** 31 - 1)
    reward_temperature: float = setting(1.0, "log R = score / temperature (lower = sharper modes)", gt=0)

    def check(self):
        n = num_states(self.length, self.vocab)
        if n > MAX_STATES:
            raise ValueError(f"length {self.length} with vocab {self.vocab} has {n} states; exact "
                             f"metrics allow at most {MAX_STATES} (e.g. length 6 and vocab 8)")




def build_env(s: SequencesSettings) -> SequenceDesign:
    return SequenceDesign(length=s.length, vocab=s.vocab, seed=s.reward_seed,
                          temperature=s.reward_temperature)


def mode_indices(env: SequenceDesign):
    """State indices (in env.all_states order) of the N_MODES highest-reward sequences."""
    from gfnem_jax.metrics import top_reward_terminals
    return top_reward_terminals(env, env.terminal_indices(), N_MODES)


Settings = runner.task_settings(NAME, SequencesSettings)  # the environment's and the training settings
build, sample, sample_row = runner.experiment, runner.sample, runner.sample_row
memory_estimate = runner.memory_estimate
