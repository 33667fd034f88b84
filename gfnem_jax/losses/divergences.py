"""Divergence estimators for GFlowNets, as pure functions of per-trajectory arrays.

Notation (REFERENCES.md): for a trajectory τ ending in x, ``log_pf = log P_F(τ)``,
``log_pb = log P_B(τ|x)``, ``log_reward = log R(x)``, all ``[B]``;
``δ(τ) = log P_F − log R − log P_B``, ``log w = −δ``; the target is
``P*(τ) = R(x) P_B(τ|x) / Z``. ``sg`` is ``jax.lax.stop_gradient``.

Every function returns a scalar *surrogate*: its value is not the divergence, its gradient
with respect to the parameters that produced ``log_pf`` / ``log_pb`` / ``log_z`` is the
estimator named in the docstring. ``log_reward`` only ever enters inside ``sg``: these are
estimators for the sampler's parameters, not for reward (model) parameters.

References: Malkin et al., "GFlowNets and variational inference", ICLR 2023 (VI);
Zimmermann et al., "A Variational Perspective on Generative Flow Networks", arXiv
2210.07992 (VP); da Silva et al., "On Divergence Measures for Training GFlowNets",
NeurIPS 2024 (DIV); Bengio et al., "Flow network based generative models...", NeurIPS 2021.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import chex
import jax
import jax.numpy as jnp

from gfnem_jax.losses.control_variates import loo_logmeanexp, loo_mean, score_cv

__all__ = [
    "reverse_kl",
    "forward_kl",
    "renyi",
    "tsallis",
    "alpha_kl",
    "wake_sleep",
    "reverse_wake_sleep",
    "score_cv",
    "flow_matching",
]

sg = jax.lax.stop_gradient

REVERSE_KL_BASELINES = ("none", "mean", "loo", "global")
POWER_CONTROL_VARIATES = ("none", "loo")
ALPHA_KL_CONTROL_VARIATES = ("none", "learned", "loo_mean", "loo_logmeanexp")


def _check_trajectories(fn, **arrays):
    """Rank-1, equal-shape, floating arrays (``None`` entries skipped)."""
    given = {k: v for k, v in arrays.items() if v is not None}
    for name, v in given.items():
        if not hasattr(v, "shape") or v.ndim != 1:
            raise ValueError(
                f"{fn}: {name} must be a per-trajectory array of shape [B], got "
                f"shape {getattr(v, 'shape', type(v))}"
            )
    vals = list(given.values())
    chex.assert_rank(vals, 1)
    chex.assert_equal_shape(vals)
    chex.assert_type(vals, float)


def _check_log_z(fn, log_z):
    if log_z is None:
        raise ValueError(f"{fn}: a learned log_z (a scalar) is required for this baseline")
    chex.assert_rank(log_z, 0)
    chex.assert_type(log_z, float)


def _check_choice(fn, name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{fn}: {name}={value!r} is not one of {allowed}")


def _static_alpha(fn, alpha):
    if not isinstance(alpha, numbers.Real):
        try:
            alpha = float(alpha)
        except Exception as e:  # a tracer: alpha must be static
            raise TypeError(
                f"{fn}: alpha must be a static Python number, got {type(alpha)}"
            ) from e
    return float(alpha)


def _power_alpha(fn, alpha):
    alpha = _static_alpha(fn, alpha)
    if alpha == 1.0:
        raise ValueError(
            f"{fn}: alpha=1 is the limit alpha->1, i.e. KL(P_F||P*): use reverse_kl instead"
        )
    if not (alpha > 0.0 and math.isfinite(alpha)):
        raise ValueError(f"{fn}: alpha must be a finite number > 0 and != 1, got {alpha!r}")
    return alpha


def _need_pair(fn, n):
    if n < 2:
        raise ValueError(
            f"{fn}: a leave-one-out control variate needs a batch of at least 2, got {n}"
        )


def reverse_kl(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    baseline: str = "loo",
    log_z: Optional[chex.Array] = None,
    log_pi: Optional[chex.Array] = None,
) -> chex.Array:
    """Reverse KL, KL(P_F ‖ P*), by REINFORCE with a baseline (VI §3; VP; DIV).

    ``∇ KL(P_F‖P*) = E_{P_F}[δ ∇log P_F] − E_{P_F}[∇log P_B]`` (the pathwise term
    ``E[∇log P_F] = 0`` is dropped analytically). Surrogate::

        mean_i ρ_i [ sg(δ_i − b_i) · log_pf_i − log_pb_i ]     (+ mean_i (sg(δ_i) + log_z)²)

    The ``− log_pb`` term is the gradient for a learned P_B (zero for a fixed one).

    Control variate ``baseline`` (b_i):
      * ``"none"``: b = 0.
      * ``"mean"``: b = mean_j δ_j, including δ_i: the expected θ-gradient is exactly
        (B−1)/B times the true one on-policy.
      * ``"loo"``: b_i = mean_{j≠i} δ_j (needs B ≥ 2); unbiased. On-policy, the θ-gradient of
        the log-variance loss (VarGrad) is exactly 2(B−1)/B times this estimator.
      * ``"global"``: b = −log_z with a learned scalar ``log_z``; unbiased whatever its value.
        The surrogate then also trains log_z by adding ``mean_i (sg(δ_i) + log_z)²``
        (unweighted), i.e. regressing log_z onto −E[δ], the ELBO-optimal value. Per batch,
        the θ-gradient is then half the TB gradient and the log_z-gradient equals TB's.
    On/off-policy: with ``log_pi = None`` the batch must be sampled from P_F (ρ = 1). With
    ``log_pi`` (log-probability of each trajectory under the behaviour policy π that sampled
    it), ρ_i = sg(exp(log_pf_i − log_pi_i)) and the estimator stays unbiased for "none",
    "loo" and "global" (baselines are unweighted means of the *other* samples' δ).

    Args:
      log_pf, log_pb, log_reward: ``[B]`` per-trajectory sums.
      baseline: one of ``REVERSE_KL_BASELINES``.
      log_z: scalar, only with ``baseline="global"``.
      log_pi: optional ``[B]`` behaviour log-probabilities (no gradient is taken through it).

    Returns:
      Scalar surrogate.
    """
    fn = "reverse_kl"
    _check_choice(fn, "baseline", baseline, REVERSE_KL_BASELINES)
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_pi=log_pi)
    if baseline == "global":
        _check_log_z(fn, log_z)
    elif log_z is not None:
        raise ValueError(
            f"{fn}: log_z is only used with baseline='global', got baseline={baseline!r}"
        )
    delta = sg(log_pf - log_reward - log_pb)
    if baseline == "none":
        b = jnp.zeros_like(delta)
    elif baseline == "mean":
        b = jnp.broadcast_to(jnp.mean(delta), delta.shape)
    elif baseline == "loo":
        _need_pair(fn, delta.shape[0])
        b = loo_mean(delta)
    else:
        b = jnp.broadcast_to(-log_z, delta.shape)
    rho = 1.0 if log_pi is None else sg(jnp.exp(log_pf - log_pi))
    surrogate = jnp.mean(rho * (sg(delta - b) * log_pf - log_pb))
    if baseline == "global":
        surrogate = surrogate + jnp.mean((delta + log_z) ** 2)
    return surrogate


def forward_kl(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    normalized: bool = True,
    log_pi: Optional[chex.Array] = None,
) -> chex.Array:
    """Forward KL, KL(P* ‖ P_F), by importance sampling (VI §3; DIV).

    ``∇_θ KL(P*‖P_F) = −E_{P*}[∇log P_F] = −(1/Z) E_q[w ∇log P_F]`` with
    ``log w = log R + log P_B − log q``, q the distribution the batch was sampled from:
    q = P_F when ``log_pi is None`` (then log w = −δ), else q = π (``log_pi``). Surrogate::

        normalized=True:   −Σ_i sg(softmax(log w)_i) · log_pf_i    (self-normalized)
        normalized=False:  −mean_i sg(w_i) · log_pf_i              (unnormalized)

    The self-normalized estimator is biased (for B = 1 its expectation is 0) but consistent,
    with O(1/B) bias; it is safe for any finite log w. The unnormalized one is unbiased for
    ``Z · ∇KL(P*‖P_F)``: exact up to the unknown positive factor Z; it overflows once
    log w exceeds the dtype's exp range (~88 in float32).

    Control variate: none. Gradient only for the parameters of P_F: log_pb and log_reward
    enter through sg'd weights (a learned P_B needs another loss, e.g. ``wake_sleep``).

    Args:
      log_pf, log_pb, log_reward: ``[B]``.
      normalized: self-normalized (True) or unnormalized (False) weights.
      log_pi: optional ``[B]`` log-probabilities under the behaviour policy that sampled τ.

    Returns:
      Scalar surrogate.
    """
    fn = "forward_kl"
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_pi=log_pi)
    log_q = log_pf if log_pi is None else log_pi
    log_w = sg(log_reward + log_pb - log_q)
    if normalized:
        return -jnp.sum(sg(jax.nn.softmax(log_w)) * log_pf)
    return -jnp.mean(sg(jnp.exp(log_w)) * log_pf)


def renyi(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    alpha: float,
    control_variate: str = "loo",
) -> chex.Array:
    """Rényi-α divergence D_α(P_F ‖ P*) = log(Σ P_F^α P*^{1−α}) / (α−1) (DIV).

    With ``g = (R P_B / P_F)^{1−α} = exp((1−α) log w)``::

        ∇ D_α = (α/(α−1)) E[g ∇log P_F] / E[g]  −  E[g ∇log P_B] / E[g]

    (expectations under P_F; Z cancels; the second term is for a learned P_B). Batch
    estimate with normalized weights ``ŵ = softmax((1−α) log w)``; surrogate::

        (α/(α−1)) Σ_i sg(c_i) · log_pf_i − Σ_i sg(ŵ_i) · log_pb_i

    Control variate: ``"none"``: c_i = ŵ_i; ``"loo"`` (B ≥ 2): the leave-one-out baseline
    mean_{j≠i} g_j subtracted from g_i in the numerator, which gives
    c_i = (B ŵ_i − 1)/(B − 1). Both are self-normalized, hence biased, consistent. As α → 1
    the "loo" estimator tends to the "loo" reverse-KL estimator (expectation → ∇KL), the
    "none" one to (B−1)/B of it with an O(1/(1−α)) zero-mean term.

    Numerical safety: ŵ is a softmax, invariant to the shift by the batch maximum, so the
    safe form changes nothing: finite for any finite log w.

    On-policy only: the batch must be sampled from P_F.

    Args:
      log_pf, log_pb, log_reward: ``[B]``.
      alpha: static Python float, > 0 and != 1 (alpha = 1 is KL(P_F‖P*): use ``reverse_kl``).
      control_variate: "loo" or "none".

    Returns:
      Scalar surrogate.
    """
    fn = "renyi"
    alpha = _power_alpha(fn, alpha)
    _check_choice(fn, "control_variate", control_variate, POWER_CONTROL_VARIATES)
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward)
    log_w = sg(log_reward + log_pb - log_pf)
    w_hat = jax.nn.softmax((1.0 - alpha) * log_w)
    n = log_pf.shape[0]
    if control_variate == "loo":
        _need_pair(fn, n)
        c = (n * w_hat - 1.0) / (n - 1.0)
    else:
        c = w_hat
    return (alpha / (alpha - 1.0)) * jnp.sum(sg(c) * log_pf) - jnp.sum(sg(w_hat) * log_pb)


def tsallis(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    alpha: float,
    control_variate: str = "loo",
    rescale: bool = True,
) -> chex.Array:
    """Tsallis-α divergence T_α(P_F ‖ P*) = (Σ P_F^α P*^{1−α} − 1) / (α−1) (DIV).

    With ``g = (R P_B / P_F)^{1−α}`` (unnormalized target)::

        Z^{1−α} ∇ T_α = (α/(α−1)) E[g ∇log P_F] − E[g ∇log P_B]

    (expectations under P_F; the second term is for a learned P_B). Surrogate::

        (α/(α−1)) mean_i sg(g_i − b_i) · log_pf_i − mean_i sg(g_i) · log_pb_i

    with ``g_i = exp((1−α) log w_i − m)``. Control variate b_i: ``"none"``: 0; ``"loo"``
    (B ≥ 2): mean_{j≠i} g_j (unbiased).

    Numerical safety (``rescale``): with ``rescale=False``, m = 0 and the estimator is
    unbiased for Z^{1−α} ∇T_α (exact up to that positive constant), but g overflows once
    |(1−α) log w| exceeds the exp range. With ``rescale=True`` (default),
    m = max_j (1−α) log w_j (a constant: no gradient flows through it), so every g_i ≤ 1 and
    the gradient is finite for any finite log w; the estimate is then the unbiased one
    multiplied by the positive, *batch-dependent* factor exp(−m): same direction per batch,
    but no longer an unbiased estimate of a fixed multiple of ∇T_α (and its scale varies
    across batches, like a per-batch learning rate).

    On-policy only: the batch must be sampled from P_F.

    Args:
      log_pf, log_pb, log_reward: ``[B]``.
      alpha: static Python float, > 0 and != 1 (alpha = 1 is KL(P_F‖P*): use ``reverse_kl``).
      control_variate: "loo" or "none".
      rescale: divide g by its batch maximum (see above).

    Returns:
      Scalar surrogate.
    """
    fn = "tsallis"
    alpha = _power_alpha(fn, alpha)
    _check_choice(fn, "control_variate", control_variate, POWER_CONTROL_VARIATES)
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward)
    s = sg((1.0 - alpha) * (log_reward + log_pb - log_pf))
    m = jnp.max(s) if rescale else 0.0
    g = jnp.exp(s - m)
    if control_variate == "loo":
        _need_pair(fn, log_pf.shape[0])
        b = loo_mean(g)
    else:
        b = jnp.zeros_like(g)
    return (alpha / (alpha - 1.0)) * jnp.mean(sg(g - b) * log_pf) - jnp.mean(sg(g) * log_pb)


def alpha_kl(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    alpha: float,
    log_pf_bwd: Optional[chex.Array] = None,
    log_pb_bwd: Optional[chex.Array] = None,
    log_reward_bwd: Optional[chex.Array] = None,
    control_variate: Union[str, chex.Array] = "loo_mean",
    log_z: Optional[chex.Array] = None,
) -> chex.Array:
    """αKL: (1−α) KL(P_F ‖ P*) + α KL(P* ‖ P_F) (VP, Zimmermann et al.).

    Two batches: ``(log_pf, log_pb, log_reward)`` ``[B]`` sampled forward from P_F, and
    ``(log_pf_bwd, log_pb_bwd, log_reward_bwd)`` ``[M]`` sampled backward: x from the
    target R/Z (data; in EM the model's own samples), then τ ~ P_B(·|x), so τ ~ P*.
    Surrogate::

        (1−α) · mean_i [ sg(δ_i + c_i) log_pf_i − log_pb_i ]
        + α · mean_k [ −log_pf_bwd_k − sg(δ'_k − b'_k) log_pb_bwd_k ]

    The reverse part is REINFORCE with c_i an estimate of log Z (the control variate):
      * ``"none"``: c = 0;
      * ``"learned"``: c = log_z, a learned scalar, also trained by adding
        ``mean_i (sg(δ_i) + log_z)²`` (not scaled by 1−α);
      * ``"loo_mean"``: c_i = mean_{j≠i} log w_j (B ≥ 2; = the "loo" of ``reverse_kl``);
      * ``"loo_logmeanexp"``: c_i = log mean_{j≠i} w_j (B ≥ 2; safe for large |log w|);
      * an explicit ``[B]`` array of c_i (each independent of τ_i), e.g. the variance-optimal
        scalar from per-sample gradients, ``−control_variates.loo_weighted_mean(δ, ‖∇log P_F‖²)``.
    All are unbiased. The forward part is exact maximum likelihood for P_F,
    ``∇_θ KL(P*‖P_F) = −E_{P*}[∇log P_F]``, plus, for a learned P_B,
    ``∇_φ KL(P*‖P_F) = −E_{P*}[(δ + log Z) ∇log P_B]`` by REINFORCE under P_B(·|x), with
    the leave-one-out baseline b'_k = mean_{l≠k} δ'_l when M ≥ 2 (none when M = 1; log Z
    drops out since E[∇log P_B(·|x)] = 0 for every x). Unbiased when x ~ R/Z i.i.d.

    Args:
      log_pf, log_pb, log_reward: ``[B]`` forward-sampled batch (on-policy).
      alpha: static float in [0, 1]; the backward batch may be omitted only for alpha = 0.
      log_pf_bwd, log_pb_bwd, log_reward_bwd: ``[M]`` backward-sampled batch.
      control_variate: a name in ``ALPHA_KL_CONTROL_VARIATES`` or a ``[B]`` array.
      log_z: scalar, only with ``control_variate="learned"``.

    Returns:
      Scalar surrogate.
    """
    fn = "alpha_kl"
    alpha = _static_alpha(fn, alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1], got {alpha!r}")
    explicit_cv = not isinstance(control_variate, str)
    if not explicit_cv:
        _check_choice(fn, "control_variate", control_variate, ALPHA_KL_CONTROL_VARIATES)
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward)
    learned = not explicit_cv and control_variate == "learned"
    if learned:
        _check_log_z(fn, log_z)
    elif log_z is not None:
        raise ValueError(f"{fn}: log_z is only used with control_variate='learned'")
    bwd = (log_pf_bwd, log_pb_bwd, log_reward_bwd)
    if alpha > 0.0 and any(a is None for a in bwd):
        raise ValueError(
            f"{fn}: alpha={alpha} > 0 needs the backward-sampled batch "
            "(log_pf_bwd, log_pb_bwd, log_reward_bwd)"
        )

    delta = sg(log_pf - log_reward - log_pb)
    n = delta.shape[0]
    if explicit_cv:
        _check_trajectories(fn, log_pf=log_pf, control_variate=control_variate)
        c = sg(control_variate)
    elif control_variate == "none":
        c = jnp.zeros_like(delta)
    elif control_variate == "learned":
        c = jnp.broadcast_to(log_z, delta.shape)
    elif control_variate == "loo_mean":
        _need_pair(fn, n)
        c = loo_mean(-delta)
    else:
        _need_pair(fn, n)
        c = loo_logmeanexp(-delta)
    surrogate = (1.0 - alpha) * jnp.mean(sg(delta + c) * log_pf - log_pb)
    if learned:
        surrogate = surrogate + jnp.mean((delta + log_z) ** 2)

    if all(a is not None for a in bwd):
        _check_trajectories(
            fn, log_pf_bwd=log_pf_bwd, log_pb_bwd=log_pb_bwd, log_reward_bwd=log_reward_bwd
        )
        delta_b = sg(log_pf_bwd - log_reward_bwd - log_pb_bwd)
        b = loo_mean(delta_b) if delta_b.shape[0] >= 2 else jnp.zeros_like(delta_b)
        forward = jnp.mean(-log_pf_bwd - sg(delta_b - b) * log_pb_bwd)
        surrogate = surrogate + alpha * forward
    return surrogate


def wake_sleep(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
    log_pi: Optional[chex.Array] = None,
) -> chex.Array:
    """(Reweighted) wake-sleep on forward samples (VI §3; Bornschein & Bengio 2015).

    P_F is trained on the forward KL by self-normalized importance sampling, P_B on the
    reverse KL (its exact gradient, ``∇_φ KL(P_F‖P*) = −E_{P_F}[∇log P_B]``). Surrogate::

        −Σ_i sg(w̃_i) · log_pf_i − mean_i ρ_i · log_pb_i

    with ``w̃ = softmax(log R + log P_B − log q)`` and q the sampler: P_F (``log_pi=None``,
    ρ = 1, w̃ = softmax(−δ)) or a behaviour policy π (ρ_i = sg(exp(log_pf_i − log_pi_i))).
    The P_F part is biased (self-normalized), consistent, safe for any finite log w; the P_B
    part is unbiased. Control variate: none.

    Args:
      log_pf, log_pb, log_reward: ``[B]``; log_pi: optional ``[B]``.

    Returns:
      Scalar surrogate.
    """
    fn = "wake_sleep"
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_pi=log_pi)
    log_q = log_pf if log_pi is None else log_pi
    w_tilde = jax.nn.softmax(sg(log_reward + log_pb - log_q))
    rho = 1.0 if log_pi is None else sg(jnp.exp(log_pf - log_pi))
    return -jnp.sum(sg(w_tilde) * log_pf) - jnp.mean(rho * log_pb)


def reverse_wake_sleep(
    log_pf: chex.Array,
    log_pb: chex.Array,
    log_reward: chex.Array,
) -> chex.Array:
    """Reverse wake-sleep on backward samples: wake-sleep with the roles swapped (VI §3).

    The batch must be sampled from P*: x ~ R/Z (data, or in EM the sleep phase's samples
    from the generative model), then τ ~ P_B(·|x). P_F is trained by maximum likelihood on
    these trajectories (exact: ``∇_θ KL(P*‖P_F) = −E_{P*}[∇log P_F]``), P_B by
    self-normalized importance sampling towards P_F (weights ∝ P_F/P* ∝ exp(δ)), an estimate
    of ``∇_φ KL(P_F‖P*) = −E_{P_F}[∇log P_B]``. Surrogate::

        −mean_i log_pf_i − Σ_i sg(softmax(δ)_i) · log_pb_i

    The P_B part is biased (self-normalized; expectation 0 for B = 1), consistent, safe for
    any finite δ. Control variate: none.

    Args:
      log_pf, log_pb, log_reward: ``[B]`` of backward-sampled trajectories.

    Returns:
      Scalar surrogate.
    """
    fn = "reverse_wake_sleep"
    _check_trajectories(fn, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward)
    w_tilde = jax.nn.softmax(sg(log_pf - log_reward - log_pb))
    return -jnp.mean(log_pf) - jnp.sum(sg(w_tilde) * log_pb)


def flow_matching(
    log_in_flows: chex.Array,
    in_mask: chex.Array,
    log_out_flows: chex.Array,
    out_mask: chex.Array,
    log_reward: chex.Array,
    state_mask: Optional[chex.Array] = None,
) -> chex.Array:
    """Flow matching on gathered edge flows (Bengio et al. 2021; REFERENCES "FM").

    For each state s' (of a DAG small enough to enumerate parents and children)::

        ℓ(s') = ( log Σ_{s∈Par(s')} F(s→s') − log[ R(s') + Σ_{s''∈Ch(s')} F(s'→s'') ] )²

    and the loss is the mean of ℓ over the states selected by ``state_mask``. No
    stop_gradient: gradients reach every unmasked edge log-flow.

    Args:
      log_in_flows: ``[S, K_in]`` log F of the edges entering each state (padded).
      in_mask: ``[S, K_in]`` bool, True for real in-edges.
      log_out_flows: ``[S, K_out]`` log F of the edges leaving each state (padded).
      out_mask: ``[S, K_out]`` bool, True for real out-edges.
      log_reward: ``[S]`` log R(s); −inf for states that are not terminal.
      state_mask: optional ``[S]`` bool of the states to include; default: states with at
        least one in-edge (so s0 is excluded). An included state needs at least one in-edge
        and a reward or an out-edge, otherwise its term is infinite. Padded slots and
        excluded states get zero gradient (no NaN), whatever they hold.

    Returns:
      Scalar loss.
    """
    fn = "flow_matching"
    chex.assert_rank([log_in_flows, in_mask, log_out_flows, out_mask], 2)
    chex.assert_equal_shape([log_in_flows, in_mask])
    chex.assert_equal_shape([log_out_flows, out_mask])
    chex.assert_rank(log_reward, 1)
    chex.assert_type([log_in_flows, log_out_flows, log_reward], float)
    chex.assert_type([in_mask, out_mask], bool)
    n_states = log_reward.shape[0]
    if log_in_flows.shape[0] != n_states or log_out_flows.shape[0] != n_states:
        raise ValueError(
            f"{fn}: log_in_flows {log_in_flows.shape}, log_out_flows {log_out_flows.shape} and "
            f"log_reward {log_reward.shape} must share the leading (state) dimension"
        )
    if state_mask is None:
        state_mask = jnp.any(in_mask, axis=1)
    else:
        chex.assert_shape(state_mask, (n_states,))
        chex.assert_type(state_mask, bool)
    sq = flow_matching_residuals(log_in_flows, in_mask, log_out_flows, out_mask, log_reward,
                                 state_mask)
    return jnp.sum(sq) / jnp.maximum(jnp.sum(state_mask), 1)


def flow_matching_residuals(log_in_flows, in_mask, log_out_flows, out_mask, log_reward,
                            state_mask=None) -> chex.Array:
    """``[S]`` squared flow-matching residuals ℓ(s') (0 outside ``state_mask``); their masked
    mean is ``flow_matching``. Same arguments as ``flow_matching``."""
    if state_mask is None:
        state_mask = jnp.any(in_mask, axis=1)
    keep = state_mask[:, None]
    li = jnp.where(keep, jnp.where(in_mask, log_in_flows, -jnp.inf), 0.0)
    lo = jnp.where(keep, jnp.where(out_mask, log_out_flows, -jnp.inf), 0.0)
    lr = jnp.where(state_mask, log_reward, 0.0)
    log_inflow = jax.nn.logsumexp(li, axis=1)
    log_outflow = jax.nn.logsumexp(jnp.concatenate([lr[:, None], lo], axis=1), axis=1)
    return jnp.where(state_mask, (log_inflow - log_outflow) ** 2, 0.0)
