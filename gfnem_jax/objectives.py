"""From trajectories to a loss: the one place that wires rollouts to the pure losses.

Objectives are small factories, as optax's transformations are: ``subtb(lam=0.9)``,
``reverse_kl(baseline="loo")``, ``renyi(alpha=0.5)``. Each returns a frozen, hashable
``Objective`` whose call ``obj(ev, traj, log_z) -> scalar`` takes the differentiable
``sampling.Evaluation`` of ``traj`` and the policy's log Z ([] or [B]); each factory validates its
own options (ValueError naming the setting). ``OBJECTIVES`` maps every name to its factory and
``get(name, **settings)`` builds one by name, passing only the settings the factory takes.
``Objective.check_sampling`` validates the behaviour policy and batch size it is used with.

Balance objectives (tb, db, subtb, logvar) tolerate any behaviour policy. The divergence objectives
(``gfnem_jax.losses.divergences``) are surrogates whose gradient is an estimator:

* ``ON_POLICY``: the batch must be drawn from P_F itself (no tempering / eps-uniform exploration):
  renyi, tsallis, alpha_kl.
* ``IMPORTANCE_WEIGHTED``: the estimator reweights the batch by ``sg(P_F / pi)`` (or uses
  ``log pi`` as the proposal) with ``pi`` the behaviour policy recorded per step in
  ``traj.log_pi``; they accept exploration. The behaviour log-probabilities are always passed:
  on-policy ``log pi == log P_F`` (up to float rounding, the weights are 1).
* ``TARGET_VIA_IS``: estimators that need trajectories from the target P* (forward KL, the forward
  part of alpha-KL, the P_F part of wake-sleep) get them, as in VI/DIV for enumerable tasks, by
  self-normalized importance weights ``softmax(log R + log P_B - log pi)`` on the forward batch.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax.numpy as jnp

from gfnem_jax import losses
from gfnem_jax.losses import divergences as div
from gfnem_jax.sampling import Evaluation, Trajectories


def _sums(ev: Evaluation, traj: Trajectories):
    return jnp.sum(ev.log_pf, axis=1), jnp.sum(ev.log_pb, axis=1), traj.log_reward


def _tb(ev, traj, log_z, o):
    pf, pb, lr = _sums(ev, traj)
    return losses.trajectory_balance(pf, pb, lr, log_z)


def _logvar(ev, traj, log_z, o):
    pf, pb, lr = _sums(ev, traj)
    return losses.log_variance(pf, pb, lr)


def _db(ev, traj, log_z, o):
    flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths)
    return losses.detailed_balance(ev.log_pf, ev.log_pb, flows, traj.mask)


def _subtb(ev, traj, log_z, o):
    flows = losses.with_boundary_flows(ev.log_flow, traj.log_reward, traj.lengths, log_z)
    return losses.subtrajectory_balance(ev.log_pf, ev.log_pb, flows, traj.mask, o.lam)


def _sums_pi(ev, traj):
    pf, pb, lr = _sums(ev, traj)
    return pf, pb, lr, jnp.sum(traj.log_pi, axis=1)


def _reverse_kl(ev, traj, log_z, o):
    """KL(P_F || P*) by REINFORCE with ``baseline`` (none / mean / loo / global = learned log Z);
    importance-weighted by sg(P_F / pi) (pi = behaviour policy, ``traj.log_pi``)."""
    pf, pb, lr, pi = _sums_pi(ev, traj)
    return div.reverse_kl(pf, pb, lr, baseline=o.baseline,
                          log_z=log_z if o.baseline == "global" else None, log_pi=pi)


def _forward_kl(ev, traj, log_z, o):
    """KL(P* || P_F) by importance sampling with the behaviour policy as proposal; self-normalized
    (default) or unnormalized (``normalized=False``, unbiased up to the factor 1/Z)."""
    pf, pb, lr, pi = _sums_pi(ev, traj)
    return div.forward_kl(pf, pb, lr, normalized=o.normalized, log_pi=pi)


def _renyi(ev, traj, log_z, o):
    """Renyi-alpha D_alpha(P_F || P*) with ``control_variate``; on-policy only."""
    pf, pb, lr = _sums(ev, traj)
    return div.renyi(pf, pb, lr, alpha=o.alpha, control_variate=o.control_variate)


def _tsallis(ev, traj, log_z, o):
    """Tsallis-alpha T_alpha(P_F || P*) with ``control_variate``; on-policy only (g rescaled by
    its batch maximum, see ``losses.tsallis``)."""
    pf, pb, lr = _sums(ev, traj)
    return div.tsallis(pf, pb, lr, alpha=o.alpha, control_variate=o.control_variate)


def _alpha_kl_cv(cv: str) -> str:
    return "loo_mean" if cv == "loo" else cv


def _alpha_kl(ev, traj, log_z, o):
    """alpha-KL = (1 - alpha) KL(P_F || P*) + alpha KL(P* || P_F) on one forward batch (on-policy).

    The reverse part is ``losses.alpha_kl`` with alpha = 0 (REINFORCE, ``control_variate`` none /
    learned / loo (= loo_mean) / loo_logmeanexp), scaled by 1 - alpha. The forward part needs
    trajectories from P*; training has only forward samples, so it is estimated by self-normalized
    importance weights on the same batch (= ``forward_kl(normalized=True)``), biased O(1/B) but
    consistent, as VI/DIV do on enumerable tasks. It gives no gradient to a learned P_B.
    """
    pf, pb, lr = _sums(ev, traj)
    cv = _alpha_kl_cv(o.control_variate)
    rev = div.alpha_kl(pf, pb, lr, alpha=0.0, control_variate=cv,
                       log_z=log_z if cv == "learned" else None)
    out = (1.0 - o.alpha) * rev if o.alpha < 1.0 else 0.0
    if o.alpha > 0.0:
        out = out + o.alpha * div.forward_kl(pf, pb, lr, normalized=True)
    return out


def _wake_sleep(ev, traj, log_z, o):
    """Reweighted wake-sleep: P_F by self-normalized IS towards P*, P_B by sg(P_F/pi)-weighted ML."""
    pf, pb, lr, pi = _sums_pi(ev, traj)
    return div.wake_sleep(pf, pb, lr, log_pi=pi)


def _reverse_wake_sleep(ev, traj, log_z, o):
    """Reverse wake-sleep through forward samples.

    ``losses.reverse_wake_sleep`` wants trajectories from P* (x ~ R/Z, tau ~ P_B). From a forward
    batch, P* is reached by self-normalized weights w~ = softmax(log R + log P_B - log pi): P_F is
    trained by weighted maximum likelihood (-sum w~ log P_F) and P_B by the reverse-wake-sleep
    weights softmax(delta) *within* that reweighted batch, which cancel w~ exactly, leaving
    -mean sg(P_F/pi) log P_B. So, trained on forward samples, this is the same estimator as
    ``wake_sleep``; the two differ only when ``losses.reverse_wake_sleep`` is given real backward
    samples (e.g. the sleep phase of GFlowNet-EM).
    """
    pf, pb, lr, pi = _sums_pi(ev, traj)
    return div.wake_sleep(pf, pb, lr, log_pi=pi)


def _fm_placeholder(ev, traj, log_z, o):
    raise ValueError("flow matching needs the environment's parents of each state: "
                     "use GFlowNet.traj_loss / GFlowNet.loss")


BALANCE = {"tb", "db", "subtb", "logvar", "fm"}
DIVERGENCES = {"reverse_kl", "forward_kl", "renyi", "tsallis", "alpha_kl", "wake_sleep",
               "reverse_wake_sleep"}
# Objectives whose samples must come from the current forward policy (no exploration allowed).
ON_POLICY = {"renyi", "tsallis", "alpha_kl"}
# Objectives that reweight the batch with sg(P_F / pi) (or use pi as the IS proposal).
IMPORTANCE_WEIGHTED = {"reverse_kl", "forward_kl", "wake_sleep", "reverse_wake_sleep"}
# Objectives whose P*-expectations are estimated by self-normalized IS on the forward batch.
TARGET_VIA_IS = {"forward_kl", "alpha_kl", "wake_sleep", "reverse_wake_sleep"}
BASELINES = tuple(div.REVERSE_KL_BASELINES)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named objective with its options (hashable: a static part of a jitted update).

    ``obj(ev, traj, log_z)`` is the loss; options read as attributes (``subtb(0.5).lam``).
    coupled: its value couples the samples of a batch (batch means inside the formula, leave-one-out
      baselines, batch-max rescaling), so data parallelism must see the global batch.
    """

    name: str
    fn: Callable[..., Any] = dataclasses.field(repr=False)
    options: Tuple[Tuple[str, Any], ...] = ()
    on_policy: bool = False
    coupled: bool = False

    def __getattr__(self, item):
        for k, v in object.__getattribute__(self, "options"):
            if k == item:
                return v
        raise AttributeError(item)

    def __call__(self, ev: Evaluation, traj: Trajectories, log_z) -> jnp.ndarray:
        return self.fn(ev, traj, log_z, self)

    @property
    def needs_log_z(self) -> bool:
        """Whether the value depends on the policy's log Z (a metric otherwise absent)."""
        return self.name in ("tb", "subtb") or (self.name == "reverse_kl" and self.baseline == "global") \
            or (self.name == "alpha_kl" and self.control_variate == "learned")

    def check_sampling(self, explore=None, batch_size: Optional[int] = None) -> None:
        """ValueError naming the setting if the behaviour policy or batch size does not fit."""
        if self.on_policy and not _is_on_policy(explore):
            raise ValueError(f"loss {self.name} needs on-policy samples; got temperature "
                             f"{explore.temperature} epsilon {explore.epsilon}; allowed: "
                             f"temperature 1 and epsilon 0")
        if batch_size is not None and batch_size < 2 and self.name == "logvar":
            raise ValueError(f"batch_size {batch_size} is too small for loss logvar (the batch mean "
                             f"of delta replaces log Z); allowed: >= 2")
        if batch_size is not None and batch_size < 2 and _loo(self):
            raise ValueError(f"batch_size {batch_size} is too small for the leave-one-out control "
                             f"variate of loss {self.name}; allowed: >= 2 (or baseline / "
                             f"control_variate none)")


def _loo(o: Objective) -> bool:
    if o.name == "reverse_kl":
        return o.baseline == "loo"
    if o.name in ("renyi", "tsallis", "alpha_kl"):
        return o.control_variate.startswith("loo")
    return False


def _is_on_policy(explore) -> bool:
    return explore is None or (explore.temperature == 1.0 and explore.epsilon == 0.0)


def _make(name, fn, on_policy=False, coupled=False, **options) -> Objective:
    return Objective(name, fn, tuple(sorted(options.items())), on_policy, coupled)


def _check_alpha_power(name, alpha):
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0 and alpha != 1):
        raise ValueError(f"alpha {alpha!r} is not allowed for loss {name}; allowed: a finite number "
                         f"> 0 and != 1 (alpha = 1 is KL(P_F||P*): use loss reverse_kl)")


def _check_choice(setting, value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{setting} {value!r} is not allowed for loss {name}; allowed: "
                         f"{', '.join(allowed)}")


# -- the factories -------------------------------------------------------------------------------
def tb() -> Objective:
    """Trajectory balance (Malkin et al. 2022): mean_b (log Z + log P_F - log R - log P_B)^2."""
    return _make("tb", _tb)


def db() -> Objective:
    """Detailed balance over the steps of each trajectory, F(terminal) = R."""
    return _make("db", _db)


def subtb(lam: float = 0.9) -> Objective:
    """Sub-trajectory balance with weights lam^(j-i), F(s_0) = Z, F(terminal) = R."""
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0 for loss subtb, got {lam}")
    return _make("subtb", _subtb, lam=float(lam))


def logvar() -> Objective:
    """Log-variance (VarGrad): batch variance of delta; couples the batch."""
    return _make("logvar", _logvar, coupled=True)


def fm() -> Objective:
    """Flow matching on the visited states (computed by ``GFlowNet`` with the environment)."""
    return _make("fm", _fm_placeholder)


def reverse_kl(baseline: str = "loo") -> Objective:
    """REINFORCE estimator of KL(P_F || P*), importance-weighted by sg(P_F / pi)."""
    _check_choice("baseline", baseline, BASELINES, "reverse_kl")
    return _make("reverse_kl", _reverse_kl, coupled=baseline in ("mean", "loo"), baseline=baseline)


def forward_kl(normalized: bool = True) -> Objective:
    """KL(P* || P_F) by importance sampling (self-normalized: couples the batch)."""
    return _make("forward_kl", _forward_kl, coupled=bool(normalized), normalized=bool(normalized))


def renyi(alpha: float = 0.5, control_variate: str = "loo") -> Objective:
    """Renyi-alpha divergence D_alpha(P_F || P*); on-policy; couples the batch (ratio of means)."""
    _check_alpha_power("renyi", alpha)
    _check_choice("control_variate", control_variate, tuple(div.POWER_CONTROL_VARIATES), "renyi")
    return _make("renyi", _renyi, on_policy=True, coupled=True, alpha=float(alpha),
                 control_variate=control_variate)


def tsallis(alpha: float = 0.5, control_variate: str = "loo") -> Objective:
    """Tsallis-alpha divergence; on-policy; couples the batch (batch-max rescaling)."""
    _check_alpha_power("tsallis", alpha)
    _check_choice("control_variate", control_variate, tuple(div.POWER_CONTROL_VARIATES), "tsallis")
    return _make("tsallis", _tsallis, on_policy=True, coupled=True, alpha=float(alpha),
                 control_variate=control_variate)


def alpha_kl(alpha: float = 0.5, control_variate: str = "loo") -> Objective:
    """(1 - alpha) KL(P_F || P*) + alpha KL(P* || P_F); on-policy; couples the batch."""
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha {alpha!r} is not allowed for loss alpha_kl; allowed: 0 <= alpha <= 1")
    _check_choice("control_variate", control_variate,
                  ("loo",) + tuple(div.ALPHA_KL_CONTROL_VARIATES), "alpha_kl")
    return _make("alpha_kl", _alpha_kl, on_policy=True, coupled=True, alpha=float(alpha),
                 control_variate=control_variate)


def wake_sleep() -> Objective:
    """Reweighted wake-sleep (self-normalized weights: couples the batch)."""
    return _make("wake_sleep", _wake_sleep, coupled=True)


def reverse_wake_sleep() -> Objective:
    """Reverse wake-sleep through forward samples (see ``_reverse_wake_sleep``)."""
    return _make("reverse_wake_sleep", _reverse_wake_sleep, coupled=True)


OBJECTIVES: Dict[str, Callable[..., Objective]] = {
    "tb": tb, "db": db, "subtb": subtb, "logvar": logvar, "fm": fm,
    "reverse_kl": reverse_kl, "forward_kl": forward_kl, "renyi": renyi, "tsallis": tsallis,
    "alpha_kl": alpha_kl, "wake_sleep": wake_sleep, "reverse_wake_sleep": reverse_wake_sleep,
}


def control_variates(name: str) -> tuple:
    """The control_variate values an objective accepts (empty: it takes none)."""
    if name in ("renyi", "tsallis"):
        return tuple(div.POWER_CONTROL_VARIATES)
    if name == "alpha_kl":
        return ("loo",) + tuple(div.ALPHA_KL_CONTROL_VARIATES)
    return ()


def get(name: str, **settings) -> Objective:
    """The objective ``name`` built with the settings its factory takes (others are ignored).

    ``get("subtb", lam=0.5, alpha=0.3)`` is ``subtb(lam=0.5)``. Unknown names raise ValueError.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(sorted(OBJECTIVES))}")
    factory = OBJECTIVES[name]
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in settings.items() if k in accepted})
