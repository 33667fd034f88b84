"""Exact EM and mean-field VI-EM baselines on the hierarchical mixture (training loops, so they
live here, not in ``models/``). Both use the M-step code path of GFlowNet-EM
(``gfnem_jax.em.m_update``) and run as one ``lax.scan`` each."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gfnem_jax import em
from gfnem_jax.models.mixture import HierarchicalMixture


class BaselineResult(NamedTuple):
    theta: jax.Array  # float[C, 2] final means
    loglik: jax.Array  # float[iters + 1] per-point log-likelihood before each iteration and at the end
    m_loss: jax.Array  # float[iters] the M-step objective -E_q log p(x, z)


def run_exact_em(model: HierarchicalMixture, x, theta0, iters: int, lr: float) -> BaselineResult:
    """Exact EM: E-step = enumerated posterior, M-step = ``em.m_update`` (SGD at ``lr``) on
    -(1/N) sum_i sum_z p_theta(z | x_i) log p_theta(x_i, z). One lax.scan, deterministic."""
    tx = optax.sgd(lr)
    Z = model.all_latents()
    N = x.shape[0]
    zs = jnp.broadcast_to(Z[None], (N,) + Z.shape)

    def body(carry, _):
        theta, opt = carry
        w = model.exact_posterior(theta, x)
        ll = model.loglik(theta, x)
        theta, opt, loss = em.m_update(model.log_joint, tx, theta, opt, x, zs, w)
        return (theta, opt), (ll, loss)

    (theta, _), (ll, loss) = jax.lax.scan(body, (theta0, tx.init(theta0)), None, length=iters)
    return BaselineResult(theta, jnp.concatenate([ll, model.loglik(theta, x)[None]]), loss)


def run_mean_field_em(model: HierarchicalMixture, x, theta0, iters: int, lr: float,
                      sweeps: int = 5) -> BaselineResult:
    """Mean-field variational EM: ``sweeps`` CAVI rounds on q(c|x)q(p|x) (warm-started, q(p)
    uniform at first), then ``em.m_update`` on -(1/N) sum_i sum_{c,p} q(c|x_i) q(p|x_i)
    log p_theta(x_i, c, p): the same M-step code path as exact EM and GFlowNet-EM."""
    tx = optax.sgd(lr)
    Z = model.all_latents()
    N = x.shape[0]
    zs = jnp.broadcast_to(Z[None], (N,) + Z.shape)
    q_c = jnp.full((N, model.n_clusters), 1.0 / model.n_clusters)
    q_p = jnp.full((N, model.n_petals), 1.0 / model.n_petals)

    def body(carry, _):
        theta, opt, qc, qp = carry
        qc, qp = model.mean_field(theta, x, qc, qp, sweeps)
        w = (qc[:, :, None] * qp[:, None, :]).reshape(N, -1)
        ll = model.loglik(theta, x)
        theta, opt, loss = em.m_update(model.log_joint, tx, theta, opt, x, zs, w)
        return (theta, opt, qc, qp), (ll, loss)

    (theta, *_), (ll, loss) = jax.lax.scan(body, (theta0, tx.init(theta0), q_c, q_p), None,
                                           length=iters)
    return BaselineResult(theta, jnp.concatenate([ll, model.loglik(theta, x)[None]]), loss)
