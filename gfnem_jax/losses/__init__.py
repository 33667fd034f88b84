"""Pure functional GFlowNet losses: plain functions of arrays, no environment or network inside.

Trajectory-level losses take per-trajectory sums of shape [B]; step-level losses take [B, T]
arrays with a [B, T] mask and flows [B, T+1]. Each returns a scalar. The divergence estimators
(``divergences``) return surrogates whose gradient is the estimator.
"""
from gfnem_jax.losses.balance import (detailed_balance, log_variance, subtrajectory_balance,
                                      trajectory_balance, with_boundary_flows)
from gfnem_jax.losses.control_variates import loo_logmeanexp, loo_mean, loo_weighted_mean
from gfnem_jax.losses.divergences import (alpha_kl, flow_matching,
                                          flow_matching_residuals, forward_kl, renyi,
                                          reverse_kl, reverse_wake_sleep, score_cv, tsallis,
                                          wake_sleep)

__all__ = ["trajectory_balance", "log_variance", "detailed_balance", "subtrajectory_balance",
           "with_boundary_flows", "reverse_kl", "forward_kl", "renyi", "tsallis", "alpha_kl",
           "wake_sleep", "reverse_wake_sleep", "flow_matching", "flow_matching_residuals", "score_cv", "loo_mean",
           "loo_logmeanexp", "loo_weighted_mean"]
