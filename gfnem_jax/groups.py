"""The settings groups every run kind composes: objective, optimiser, exploration, MLP policy, EM
schedule.

A run kind's settings class inherits the groups it uses (frozen dataclasses compose by
inheritance) and may give a field its own default, or a narrower set of choices, with
``config.retune``::

    @dataclasses.dataclass(frozen=True)
    class MixtureSettings(EMScheduleSettings, OptimiserSettings, ObjectiveSettings,
                          run_dir.CheckpointSettings):
        lr: float = retune(OptimiserSettings, "lr", 1e-2)
        loss: str = retune(ObjectiveSettings, "loss", "tb", choices=("tb", "subtb"))

A field is spelled one way in every kind (``threshold_start``, ``sleep_prob``, ``ls_rounds``), so
one flag and one config.json key mean the same thing everywhere. Each group turns its fields into
the library value they configure (``objective()``, ``explore()``, ``schedule()``, ...).
"""
from __future__ import annotations

import dataclasses

from gfnem_jax import objectives
from gfnem_jax.config import Settings, setting


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings(Settings):
    """The GFlowNet objective and its options (each objective takes the ones it declares)."""

    loss: str = setting("tb", "training objective", choices=tuple(sorted(objectives.OBJECTIVES)))
    lam: float = setting(0.9, "SubTB / PCL lambda", gt=0)
    baseline: str = setting("loo", "reverse_kl baseline: none, mean, loo (leave-one-out) or global "
                            "(learned log Z)", choices=objectives.BASELINES)
    alpha: float = setting(0.5, "alpha of renyi / tsallis / alpha_kl")
    control_variate: str = setting("loo", "control variate of renyi / tsallis / alpha_kl (see the "
                                   "loss's docs)")
    normalized: bool = setting(True, "forward_kl: self-normalized importance weights (off: "
                               "unnormalized, unbiased up to 1/Z)")
    rl_correction: str = setting("pb", "soft_q / munchausen / pcl: the reward of a transition "
                                 "s -> s' is log P_B(s | s') (pb: the GFlowNet, R/Z on any DAG) or "
                                 "0 (none: plain soft RL, biased by the number of paths), plus "
                                 "log R at the last one", choices=objectives.RL_CORRECTIONS)
    tau: float = setting(0.05, "soft_q / munchausen: Polyak rate of the target network (1 = no "
                         "target network)", gt=0, max=1)
    munchausen_alpha: float = setting(0.15, "munchausen: weight of the log-policy bonus (the "
                                      "entropy scale is 1 / (1 - alpha))", min=0, lt=1)
    munchausen_clip: float = setting(-20.0, "munchausen: lower clip of the bonus's "
                                     "scaled log-policy", lt=0)

    def objective(self) -> objectives.Objective:
        """The objective value these settings name (``objectives.get``)."""
        names = {f.name for f in dataclasses.fields(ObjectiveSettings)} - {"loss"}
        return objectives.get(self.loss, **{k: getattr(self, k) for k in sorted(names)
                                            if hasattr(self, k)})


@dataclasses.dataclass(frozen=True)
class OptimiserSettings(Settings):
    """Adam on the policy, with its own rate for log Z, and global-norm clipping."""

    lr: float = setting(5e-4, "Adam learning rate of the policy", gt=0)
    lr_logz: float = setting(0.05, "Adam learning rate of log Z", gt=0)
    grad_clip: float = setting(0.0, "global-norm gradient clipping, 0 = off", min=0)
    lr_drop: float = setting(1.0, "multiply both learning rates by this after lr_drop_at of the "
                             "steps (1 = constant)", gt=0, max=1)
    lr_drop_at: float = setting(0.75, "fraction of the steps (the policy's updates) after which "
                                "lr_drop applies", min=0, max=1)

    def optim(self):
        """``OptimConfig`` of these settings; the drop comes at update
        ``round(lr_drop_at * steps)`` (``steps`` of the composing settings, 0 when absent)."""
        from gfnem_jax.optim import OptimConfig
        drop_at = int(round(self.lr_drop_at * getattr(self, "steps", 0)))
        return OptimConfig(self.lr, self.lr_logz, self.grad_clip, lr_drop=self.lr_drop,
                           drop_at=drop_at)


@dataclasses.dataclass(frozen=True)
class ExplorationSettings(Settings):
    """The behaviour policy of the sampler's rollouts (tempered, eps-uniform)."""

    temperature: float = setting(1.0, "exploration: sample from softmax(logits / T)", gt=0)
    epsilon: float = setting(0.0, "exploration: mix eps of uniform over legal actions", min=0, lt=1)

    def explore(self):
        from gfnem_jax.sampling import Exploration as Explore
        return Explore(self.temperature, self.epsilon)


@dataclasses.dataclass(frozen=True)
class MLPSettings(Settings):
    """The size of an MLP policy (``nets.mlp.MLPPolicy``)."""

    hidden: int = setting(256, "MLP width", min=1)
    n_layers: int = setting(2, "MLP hidden layers", min=1)


@dataclasses.dataclass(frozen=True)
class EMScheduleSettings(Settings):
    """When GFlowNet-EM takes an M-step, and the E-step's extra moves (sleep phase, local search).

    fixed: ``e_steps`` E-steps then ``m_steps`` M-steps; adaptive: an E-step every step and an
    M-step after it when the EMA of the sampler loss (decay ``ema_decay``) is under a threshold
    falling linearly from ``threshold_start`` to ``threshold_end`` over ``threshold_steps`` steps
    (0 = the run's steps).
    """

    schedule: str = setting("fixed", "fixed (k E-steps then m M-steps) or adaptive (M-step when "
                            "the loss EMA is under a falling threshold)",
                            choices=("fixed", "adaptive"))
    e_steps: int = setting(100, "fixed schedule: E-steps per cycle", min=1)
    m_steps: int = setting(1, "fixed schedule: M-steps per cycle", min=1)
    ema_decay: float = setting(0.9, "adaptive: EMA decay of the loss", min=0, lt=1)
    threshold_start: float = setting(4.0, "adaptive: threshold at step 0", min=0)
    threshold_end: float = setting(0.8, "adaptive: final threshold", min=0)
    threshold_steps: int = setting(0, "adaptive: steps of the linear decrease, 0 = steps", min=0)
    sleep_prob: float = setting(0.0, "probability of a sleep-phase update per E-step (0 = off)",
                                min=0, max=1, was=("sleep",))
    ls_rounds: int = setting(0, "local-search rounds on the M-step's samples (0 = off)", min=0,
                             was=("local_search",))
    ls_back: int = setting(1, "local search: steps back with P_B", min=1, max=2)

    def em_config(self, e_batch: int, m_batch: int, steps: int, **more):
        """``em.EMConfig`` of this schedule (``threshold_steps`` 0 = ``steps``); ``more``: its
        other fields (m_samples, thresholds a kind computes, ...)."""
        from gfnem_jax import em
        kw = dict(schedule=self.schedule, e_steps=self.e_steps, m_steps=self.m_steps,
                  ema_decay=self.ema_decay, threshold_start=self.threshold_start,
                  threshold_end=self.threshold_end, threshold_steps=self.threshold_steps or steps,
                  sleep_prob=self.sleep_prob, ls_rounds=self.ls_rounds, ls_back=self.ls_back)
        kw.update(more)
        return em.EMConfig(e_batch=e_batch, m_batch=m_batch, **kw)
