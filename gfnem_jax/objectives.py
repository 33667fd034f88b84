"""From trajectories to a loss: the one place that wires rollouts to the pure losses.

An objective is a small frozen (hashable) value, built as optax's transformations are:
``subtb(lam=0.9)``, ``reverse_kl(baseline="loo")``, ``renyi(alpha=0.5, control_variate="loo")``.
Each carries its loss, ``obj(ev, traj, log_z) -> scalar`` (``ev`` the differentiable
``sampling.Evaluation`` of ``traj``: log_pf, log_pb [B, T], log_flow [B, T+1]; ``log_z`` the
policy's log Z, [] or [B]), and the flags that say how it may be used. No code branches on an
objective's ``name``: it is a label for logs, configs and error messages.

Flags (class attributes, or properties where an option decides):

  needs_log_z          the value depends on the policy's log Z (training logs it as a metric).
  on_policy            the batch must be drawn from P_F itself: no tempering / eps-uniform
                       exploration (``check_sampling`` refuses it). renyi, tsallis, alpha_kl.
  importance_weighted  the estimator reweights the batch by sg(P_F / pi), or uses pi as the
                       importance proposal, with pi the behaviour policy recorded per step in
                       ``traj.log_pi``: it accepts exploration. Without exploration
                       log pi == log P_F (the weights are 1 up to rounding).
  balance              neither of the two: a balance condition that holds trajectory by
                       trajectory, so any trajectory distribution fits, backward trajectories
                       from data included (tb, db, subtb, logvar, fm).
  couples_samples      the value is not a mean of per-trajectory (or per-transition) terms: a
                       batch statistic (log-variance, batch-mean or leave-one-out baselines,
                       self-normalised weights, batch-max rescaling) couples the samples, so data
                       parallelism must evaluate it on the gathered global batch.
  uses_flows           reads the flow head (``ev.log_flow``): db, subtb.
  edge_flows           flow matching: reads the forward logits as edge flows of every parent of
                       each visited state, so it needs the environment and has its own
                       evaluation path (``GFlowNet.terms``); not one-pass, and its call raises.
  min_batch_size       the smallest batch the estimator is defined for.
  soft_values          the RL view (soft_q, munchausen, pcl): the forward logits are Q-values, and
                       ``ev.log_flow`` is their soft value V(s) = log sum_{a legal} exp Q(s, a)
                       (``sampling.soft_value``, 0 at terminal states) instead of the flow head.
  needs_target         the loss bootstraps from a lagged copy of the parameters (a target
                       network): the objective's call takes ``target``, the ``Evaluation`` of the
                       same trajectories under that copy (no gradient); the training optimizer
                       keeps the copy (``loop.with_target`` at rate ``tau``). Without one
                       (``target=None``) the online evaluation, stop-gradient, is the target.

Options are the dataclass fields of each objective: ``OBJECTIVES[name].option_names()``. An
unknown option is a ValueError naming it, the objective and what it takes. ``get(name,
**settings)`` builds an objective from a bag of settings shared by every objective (a run's
config): each objective gets the settings it declares; a setting no objective declares is an
error. Some divergence estimators need trajectories from the target P* (forward KL, the forward
part of alpha-KL, the P_F part of wake-sleep): as in VI/DIV for enumerable tasks, they get them by
self-normalised importance weights ``softmax(log R + log P_B - log pi)`` on the forward batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import jax
import jax.numpy as jnp

from gfnem_jax import losses
from gfnem_jax.losses import divergences as div
from gfnem_jax.sampling import Evaluation, Trajectories


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective: its options are its fields, its flags class attributes (see the module).

    Subclasses set ``name`` and the flags that differ from these defaults, declare their options
    as fields (validated in ``__post_init__``) and implement ``__call__``.
    """

    name: ClassVar[str] = ""
    needs_log_z: ClassVar[bool] = False
    on_policy: ClassVar[bool] = False
    importance_weighted: ClassVar[bool] = False
    couples_samples: ClassVar[bool] = False
    uses_flows: ClassVar[bool] = False
    edge_flows: ClassVar[bool] = False
    min_batch_size: ClassVar[int] = 1
    soft_values: ClassVar[bool] = False
    needs_target: ClassVar[bool] = False
    # why a batch of fewer than ``min_batch_size`` does not do (for the error message)
    batch_reason: ClassVar[str] = ""

    def __new__(cls, *args, **options):
        takes = cls.option_names()
        for k in options:
            if k not in takes:
                raise ValueError(f"{k} is not an option of loss {cls.name}; it takes: "
                                 f"{', '.join(takes) or 'no options'}")
        return super().__new__(cls)

    @classmethod
    def option_names(cls) -> Tuple[str, ...]:
        """The options this objective declares (its fields), in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def options(self) -> Dict[str, Any]:
        """{option: value} (for logs)."""
        return {k: getattr(self, k) for k in self.option_names()}

    @property
    def balance(self) -> bool:
        """Any behaviour policy and any trajectory source (backward from data included) fit."""
        return not (self.on_policy or self.importance_weighted)

    def __call__(self, ev: Evaluation, traj: Trajectories, log_z) -> jnp.ndarray:
        raise NotImplementedError

    def check_sampling(self, explore=None, batch_size: Optional[int] = None) -> None:
        """ValueError naming the setting if the behaviour policy or batch size does not fit."""
        if self.on_policy and not _is_on_policy(explore):
            raise ValueError(f"loss {self.name} needs on-policy samples; got temperature "
                             f"{explore.temperature} epsilon {explore.epsilon}; allowed: "
                             f"temperature 1 and epsilon 0")
        if batch_size is not None and batch_size < self.min_batch_size:
            raise ValueError(f"batch_size {batch_size} is too small for loss {self.name} "
                             f"({self.batch_reason}); allowed: >= {self.min_batch_size}")


def _is_on_policy(explore) -> bool:
    return explore is None or (explore.temperature == 1.0 and explore.epsilon == 0.0)


def _set(obj, option, value):
    object.__setattr__(obj, option, value)


def _check_choice(obj, option, allowed):
    value = getattr(obj, option)
    if value not in allowed:
        raise ValueError(f"{option} {value!r} is not allowed for loss {obj.name}; allowed: "
                         f"{', '.join(allowed)}")


def _check_alpha_power(obj):
    a = obj.alpha
    if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0 and a != 1):
        raise ValueError(f"alpha {a!r} is not allowed for loss {obj.name}; allowed: a finite "
                         f"number > 0 and != 1 (alpha = 1 is KL(P_F||P*): use loss reverse_kl)")
    _set(obj, "alpha", float(a))


_LOO_REASON = "the leave-one-out control variate needs another sample; or baseline / " \
              "control_variate none"


def _sums(ev: Evaluation, traj: Trajectories):
    """(log P_F, log P_B, log R) per trajectory, each [B]."""
    return jnp.sum(ev.log_pf, axis=1), jnp.sum(ev.log_pb, axis=1), traj.log_reward


def _log_pi(traj: Trajectories):
    """[B]: log-probability of each trajectory under the behaviour policy."""
    return jnp.sum(traj.log_pi, axis=1)


# -- balance objectives: any behaviour policy ----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TB(Objective):
    """Trajectory balance (Malkin et al. 2022): mean_b (log Z + log P_F - log R - log P_B)^2."""

    name = "tb"
    needs_log_z = True

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return losses.trajectory_balance(pf, pb, lr, log_z)


@dataclasses.dataclass(frozen=True)
class DB(Objective):
    """Detailed balance over the real transitions, F(terminal) = R (pooled mean over the batch)."""

    name = "db"
    uses_flows = True

    def __call__(self, ev, traj, log_z):
        flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths)
        return losses.detailed_balance(ev.log_pf, ev.log_pb, flows, traj.mask)


@dataclasses.dataclass(frozen=True)
class SubTB(Objective):
    """Sub-trajectory balance with weights lam^(j-i), F(s_0) = Z, F(terminal) = R."""

    name = "subtb"
    needs_log_z = True
    uses_flows = True
    lam: float = 0.9

    def __post_init__(self):
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam {self.lam!r} is not allowed for loss subtb; allowed: a finite "
                             f"number > 0")
        _set(self, "lam", float(self.lam))

    def __call__(self, ev, traj, log_z):
        flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths, log_z)
        return losses.subtrajectory_balance(ev.log_pf, ev.log_pb, flows, traj.mask, self.lam)


@dataclasses.dataclass(frozen=True)
class LogVar(Objective):
    """Log-variance (VarGrad): the batch variance of delta = log P_F - log R - log P_B."""

    name = "logvar"
    couples_samples = True
    min_batch_size = 2
    batch_reason = "the batch mean of delta replaces log Z"

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return losses.log_variance(pf, pb, lr)


@dataclasses.dataclass(frozen=True)
class FM(Objective):
    """Flow matching on the visited states. ``GFlowNet.terms`` evaluates the edge flows of every
    parent (the environment is needed); ``GFlowNet.value`` reduces them. Calling it raises."""

    name = "fm"
    edge_flows = True

    def __call__(self, ev, traj, log_z):
        raise ValueError("flow matching needs the environment's parents of each state: "
                         "use GFlowNet.traj_loss / GFlowNet.loss")


# -- divergences (``gfnem_jax.losses.divergences``): surrogates whose gradient is the estimator ---
@dataclasses.dataclass(frozen=True)
class ReverseKL(Objective):
    """KL(P_F || P*) by REINFORCE with ``baseline`` (none / mean / loo / global = learned log Z),
    importance-weighted by sg(P_F / pi)."""

    name = "reverse_kl"
    importance_weighted = True
    batch_reason = _LOO_REASON
    BASELINES: ClassVar[Tuple[str, ...]] = tuple(div.REVERSE_KL_BASELINES)
    baseline: str = "loo"

    def __post_init__(self):
        _check_choice(self, "baseline", self.BASELINES)

    @property
    def needs_log_z(self):
        return self.baseline == "global"

    @property
    def couples_samples(self):
        return self.baseline in ("mean", "loo")

    @property
    def min_batch_size(self):
        return 2 if self.baseline == "loo" else 1

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return div.reverse_kl(pf, pb, lr, baseline=self.baseline,
                              log_z=log_z if self.needs_log_z else None, log_pi=_log_pi(traj))


@dataclasses.dataclass(frozen=True)
class ForwardKL(Objective):
    """KL(P* || P_F) by importance sampling with the behaviour policy as proposal; self-normalised
    (default; couples the batch) or unnormalised (``normalized=False``, unbiased up to 1/Z)."""

    name = "forward_kl"
    importance_weighted = True
    normalized: bool = True

    def __post_init__(self):
        _set(self, "normalized", bool(self.normalized))

    @property
    def couples_samples(self):
        return self.normalized

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return div.forward_kl(pf, pb, lr, normalized=self.normalized, log_pi=_log_pi(traj))


@dataclasses.dataclass(frozen=True)
class Renyi(Objective):
    """Renyi-alpha D_alpha(P_F || P*) with ``control_variate``; on-policy; a ratio of batch
    means."""

    name = "renyi"
    on_policy = True
    couples_samples = True
    batch_reason = _LOO_REASON
    CONTROL_VARIATES: ClassVar[Tuple[str, ...]] = tuple(div.POWER_CONTROL_VARIATES)
    alpha: float = 0.5
    control_variate: str = "loo"

    def __post_init__(self):
        _check_alpha_power(self)
        _check_choice(self, "control_variate", self.CONTROL_VARIATES)

    @property
    def min_batch_size(self):
        return 2 if self.control_variate.startswith("loo") else 1

    divergence: ClassVar[Any] = staticmethod(div.renyi)

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return self.divergence(pf, pb, lr, alpha=self.alpha, control_variate=self.control_variate)


@dataclasses.dataclass(frozen=True)
class Tsallis(Renyi):
    """Tsallis-alpha T_alpha(P_F || P*) with ``control_variate``; on-policy; g rescaled by its
    batch maximum (see ``losses.tsallis``)."""

    name = "tsallis"
    divergence = staticmethod(div.tsallis)


@dataclasses.dataclass(frozen=True)
class AlphaKL(Objective):
    """alpha-KL = (1 - alpha) KL(P_F || P*) + alpha KL(P* || P_F) on one forward batch; on-policy.

    The reverse part is ``losses.alpha_kl`` with alpha = 0 (REINFORCE, ``control_variate`` none /
    learned / loo (= loo_mean) / loo_logmeanexp), scaled by 1 - alpha. The forward part needs
    trajectories from P*; training has only forward samples, so it is estimated by self-normalised
    importance weights on the same batch (= ``forward_kl(normalized=True)``), biased O(1/B) but
    consistent, as VI/DIV do on enumerable tasks. It gives no gradient to a learned P_B.
    """

    name = "alpha_kl"
    on_policy = True
    batch_reason = _LOO_REASON
    CONTROL_VARIATES: ClassVar[Tuple[str, ...]] = ("loo",) + tuple(div.ALPHA_KL_CONTROL_VARIATES)
    alpha: float = 0.5
    control_variate: str = "loo"

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha {self.alpha!r} is not allowed for loss alpha_kl; allowed: "
                             f"0 <= alpha <= 1")
        _check_choice(self, "control_variate", self.CONTROL_VARIATES)
        _set(self, "alpha", float(self.alpha))

    @property
    def _cv(self) -> str:
        return "loo_mean" if self.control_variate == "loo" else self.control_variate

    @property
    def needs_log_z(self):
        return self.control_variate == "learned"

    @property
    def couples_samples(self):
        return self.alpha > 0.0 or self.control_variate.startswith("loo")

    @property
    def min_batch_size(self):
        return 2 if self.control_variate.startswith("loo") else 1

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        rev = div.alpha_kl(pf, pb, lr, alpha=0.0, control_variate=self._cv,
                           log_z=log_z if self.needs_log_z else None)
        out = (1.0 - self.alpha) * rev if self.alpha < 1.0 else 0.0
        if self.alpha > 0.0:
            out = out + self.alpha * div.forward_kl(pf, pb, lr, normalized=True)
        return out


@dataclasses.dataclass(frozen=True)
class WakeSleep(Objective):
    """Reweighted wake-sleep: P_F by self-normalised IS towards P*, P_B by sg(P_F/pi)-weighted
    maximum likelihood."""

    name = "wake_sleep"
    importance_weighted = True
    couples_samples = True

    def __call__(self, ev, traj, log_z):
        pf, pb, lr = _sums(ev, traj)
        return div.wake_sleep(pf, pb, lr, log_pi=_log_pi(traj))


@dataclasses.dataclass(frozen=True)
class ReverseWakeSleep(WakeSleep):
    """Reverse wake-sleep through forward samples: the same estimator as ``wake_sleep``.

    ``losses.reverse_wake_sleep`` wants trajectories from P* (x ~ R/Z, tau ~ P_B). From a forward
    batch, P* is reached by self-normalised weights w~ = softmax(log R + log P_B - log pi): P_F is
    trained by weighted maximum likelihood (-sum w~ log P_F) and P_B by the reverse-wake-sleep
    weights softmax(delta) *within* that reweighted batch, which cancel w~ exactly, leaving
    -mean sg(P_F/pi) log P_B. So, trained on forward samples, it is ``wake_sleep``; the two differ
    only when ``losses.reverse_wake_sleep`` is given real backward samples (e.g. the sleep phase
    of GFlowNet-EM).
    """

    name = "reverse_wake_sleep"


# -- the RL view: entropy-regularised RL on the DAG, Q-values = the forward logits ---------------
RL_CORRECTIONS = ("pb", "none")


def rl_rewards(ev: Evaluation, traj: Trajectories, correction: str) -> jnp.ndarray:
    """float[B, T]: the reward of each transition s_t -> s_{t+1} of the soft-RL view,

        r_t = c_t + [t = L - 1] log R(x),   c_t = log P_B(s_t | s_{t+1}) (correction "pb") or 0
        ("none"),

    0 at padding. The reward is the environment's: no gradient flows into log P_B through it (a
    learned P_B head stays where it was initialised; Tiapkin et al. 2024 use a uniform P_B)."""
    T = traj.mask.shape[1]
    last = jnp.arange(T)[None, :] == (traj.lengths[:, None] - 1)
    c = jax.lax.stop_gradient(ev.log_pb) if correction == "pb" else jnp.zeros_like(ev.log_pb)
    r = c + jnp.where(last, traj.log_reward[:, None], 0.0)
    return jnp.where(traj.mask, r, 0.0)


def _next_values(log_v: jnp.ndarray, traj: Trajectories) -> jnp.ndarray:
    """float[B, T]: V(s_{t+1}) from soft values [B, T+1], 0 where s_{t+1} is the final state
    (its reward is in r_t) and at padding."""
    T = traj.mask.shape[1]
    last = jnp.arange(T)[None, :] == (traj.lengths[:, None] - 1)
    return jnp.where(traj.mask & ~last, log_v[:, 1:], 0.0)


def _pooled_square(resid, mask):
    m = mask.astype(resid.dtype)
    return jnp.sum(m * resid ** 2) / jnp.maximum(jnp.sum(m), 1.0)


@dataclasses.dataclass(frozen=True)
class SoftRL(Objective):
    """Shared by the objectives of the RL view: ``rl_correction`` (pb / none) and the flags."""

    soft_values = True
    rl_correction: str = "pb"

    def __post_init__(self):
        _check_choice(self, "rl_correction", RL_CORRECTIONS)


def _check_tau(obj):
    t = obj.tau
    if not (isinstance(t, (int, float)) and 0 < t <= 1):
        raise ValueError(f"tau {t!r} is not allowed for loss {obj.name}; allowed: 0 < tau <= 1 "
                         f"(1 = no lag: the online network, stop-gradient)")
    _set(obj, "tau", float(t))


@dataclasses.dataclass(frozen=True)
class SoftQ(SoftRL):
    """Soft Q-learning (Haarnoja et al. 2017; soft DQN) with a target network, on the DAG.

    Q(s, a) = the forward logits, P_F = softmax of the masked logits, V(s) = log sum_a exp Q(s, a)
    (``ev.log_flow`` under ``soft_values``), rewards r_t from ``rl_rewards``:

        l_t = Q(s_t, a_t) - sg(r_t + Vbar(s_{t+1})),   Vbar(final state) = 0,
        loss = sum_{b,t} mask l^2 / sum_{b,t} mask       (pooled over real transitions),

    with Q(s_t, a_t) = log P_F(a_t | s_t) + V(s_t) and Vbar the target network's soft value
    (``target.log_flow``; target None: sg of the online one). Shapes: ev.log_pf, ev.log_pb
    [B, T], ev.log_flow [B, T+1], traj.log_reward [B]. Off-policy (any behaviour policy, a
    balance-like condition per transition). Fixed point: with ``rl_correction`` pb, V = log F and
    Q(s, a) = log F(s') + log P_B(s | s'), i.e. detailed balance with F = exp V: the sampler is
    R/Z on any DAG; with none, V(s) = log sum_x n(s -> x) R(x) and the sampler is
    n_paths(x) R(x) / Z' (R/Z only on a tree). ``tau``: Polyak rate of the target network.
    """

    name = "soft_q"
    tau: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        _check_tau(self)

    @property
    def needs_target(self):
        return self.tau < 1.0

    def __call__(self, ev, traj, log_z, target: Optional[Evaluation] = None):
        v = ev.log_flow
        vbar = jax.lax.stop_gradient(v if target is None else target.log_flow)
        y = rl_rewards(ev, traj, self.rl_correction) + _next_values(vbar, traj)
        q = ev.log_pf + v[:, :-1]
        return _pooled_square(q - jax.lax.stop_gradient(y), traj.mask)


@dataclasses.dataclass(frozen=True)
class Munchausen(SoftQ):
    """Munchausen soft Q-learning (M-DQN, Vieillard et al. 2020) on the DAG, target network.

    Entropy scale tau_e = 1 / (1 - munchausen_alpha), Q(s, a) = tau_e * logits(s, a),
    P_F = softmax(logits) = softmax(Q / tau_e), V(s) = tau_e * log sum_a exp logits(s, a):

        y_t = r_t + alpha * clip(tau_e log Pbar_F(a_t | s_t), munchausen_clip, 0) + Vbar(s_{t+1}),
        loss = pooled mean over real transitions of (Q(s_t, a_t) - sg(y_t))^2,

    Pbar_F, Vbar from the target network (``target``; None: sg of the online ones), Vbar(final) =
    0, r_t from ``rl_rewards``. The Munchausen bonus makes the fixed point the soft-optimal policy
    at entropy scale (1 - alpha) tau_e = 1, i.e. the same as soft Q-learning's (R/Z with
    ``rl_correction`` pb), as long as the clip is not active; at the fixed point
    logits(s, a) = r(s, a) + V*(s') - alpha V*(s), V* = log F. Off-policy; shapes as ``soft_q``.
    """

    name = "munchausen"
    munchausen_alpha: float = 0.15
    munchausen_clip: float = -20.0

    def __post_init__(self):
        super().__post_init__()
        a = self.munchausen_alpha
        if not (isinstance(a, (int, float)) and 0 <= a < 1):
            raise ValueError(f"munchausen_alpha {a!r} is not allowed for loss munchausen; allowed: "
                             f"0 <= munchausen_alpha < 1")
        c = self.munchausen_clip
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c < 0):
            raise ValueError(f"munchausen_clip {c!r} is not allowed for loss munchausen; allowed: "
                             f"a finite number < 0")
        _set(self, "munchausen_alpha", float(a))
        _set(self, "munchausen_clip", float(c))

    def __call__(self, ev, traj, log_z, target: Optional[Evaluation] = None):
        te = 1.0 / (1.0 - self.munchausen_alpha)
        bar = jax.lax.stop_gradient(ev if target is None else target)
        bonus = self.munchausen_alpha * jnp.clip(te * bar.log_pf, self.munchausen_clip, 0.0)
        y = (rl_rewards(ev, traj, self.rl_correction) + jnp.where(traj.mask, bonus, 0.0)
             + te * _next_values(bar.log_flow, traj))
        q = te * (ev.log_pf + ev.log_flow[:, :-1])
        return _pooled_square(q - jax.lax.stop_gradient(y), traj.mask)


@dataclasses.dataclass(frozen=True)
class PCL(SoftRL):
    """Path consistency learning (Nachum et al. 2017; unified PCL: V and pi from the same
    Q-values) on the DAG, over every sub-trajectory 0 <= i < j <= L with weights lam^(j-i):

        l_ij = V(s_i) + sum_{t=i}^{j-1} (log P_F(a_t | s_t) - r'_t) - V(s_j),
        V(s_L) = log R(x),  r'_t = log P_B(s_t | s_{t+1}) (pb) or 0 (none),
        loss = mean_b sum_{i<j} lam^(j-i) l_ij^2 / sum_{i<j} lam^(j-i),

    V = the soft value of the forward logits (``ev.log_flow``), the gradient through both V and
    log P_F, no target network (``losses.subtrajectory_balance`` on these flows and rewards). With
    pb it is SubTB with F = exp V and a fixed P_B: fixed point R/Z; with none, n_paths(x) R(x)/Z'.
    Shapes as ``soft_q``; off-policy.
    """

    name = "pcl"
    lam: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam {self.lam!r} is not allowed for loss pcl; allowed: a finite "
                             f"number > 0")
        _set(self, "lam", float(self.lam))

    def __call__(self, ev, traj, log_z):
        T = traj.mask.shape[1]
        last = jnp.arange(T)[None, :] == (traj.lengths[:, None] - 1)
        c = rl_rewards(ev, traj, self.rl_correction) - jnp.where(last, traj.log_reward[:, None],
                                                                 0.0)
        flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths)
        return losses.subtrajectory_balance(ev.log_pf, jnp.where(traj.mask, c, 0.0), flows,
                                            traj.mask, self.lam)


# -- the factories (optax-like lower-case names) and the registry --------------------------------
tb, db, subtb, logvar, fm = TB, DB, SubTB, LogVar, FM
reverse_kl, forward_kl, renyi, tsallis, alpha_kl = ReverseKL, ForwardKL, Renyi, Tsallis, AlphaKL
wake_sleep, reverse_wake_sleep = WakeSleep, ReverseWakeSleep
soft_q, munchausen, pcl = SoftQ, Munchausen, PCL

OBJECTIVES: Dict[str, Type[Objective]] = {c.name: c for c in (
    TB, DB, SubTB, LogVar, FM, ReverseKL, ForwardKL, Renyi, Tsallis, AlphaKL, WakeSleep,
    ReverseWakeSleep, SoftQ, Munchausen, PCL)}
BASELINES = ReverseKL.BASELINES


def control_variates(name: str) -> tuple:
    """The control_variate values objective ``name`` accepts (empty: it takes none)."""
    return getattr(OBJECTIVES[name], "CONTROL_VARIATES", ())


def settings_names() -> Tuple[str, ...]:
    """Every option some objective declares (the settings ``get`` accepts), sorted."""
    return tuple(sorted({k for c in OBJECTIVES.values() for k in c.option_names()}))


def get(name: str, **settings) -> Objective:
    """The objective ``name`` built from a bag of settings shared by every objective.

    Each objective gets the settings it declares: ``get("subtb", lam=0.5, alpha=0.3)`` is
    ``subtb(lam=0.5)``. An unknown name, or a setting that no objective declares, is a
    ValueError.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(sorted(OBJECTIVES))}")
    cls = OBJECTIVES[name]
    known = settings_names()
    for k in settings:
        if k not in known:
            raise ValueError(f"{k} is not an option of any objective (loss {name} takes: "
                             f"{', '.join(cls.option_names()) or 'no options'}); options: "
                             f"{', '.join(known)}")
    takes = cls.option_names()
    return cls(**{k: v for k, v in settings.items() if k in takes})
