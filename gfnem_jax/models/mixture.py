"""The hierarchical Gaussian mixture of GFlowNet-EM (Hu et al., ICML 2023, Sec. 3 and 5).

Generative model, C superclusters x P petals (C = P = 4 in the paper), data dimension 2:

    c ~ Uniform{0..C-1},   p ~ Uniform{0..P-1},   x | c, p ~ N(mu_c + o_p, sigma^2 I_2)

with fixed petal offsets o_p = r (cos a_p, sin a_p), a_p = (p + 1/2) * 2 pi / P (r = 1, so the
angles are (p + 1/2) pi / 2 for P = 4) and sigma = 0.25. Only the supercluster means
theta = mu float[C, 2] are learned. The latent z = (c, p) int32[2] is built in two steps by
``Sequence(length=2, vocab=4)``; its flat index is c * P + p (the env's base-V terminal order).

    log p(x, z) = -log C - log P - log(2 pi sigma^2) - |x - mu_c - o_p|^2 / (2 sigma^2)
    log p(x)    = logsumexp_z log p(x, z)                      (true densities, no constant dropped)

Baselines (in ``gfnem_jax.experiments.mixture_baselines``; the M-step is ``em.m_update``):
  exact EM:       q(z | x) = p_theta(z | x), by enumerating the C*P latents;
  mean-field EM:  q(c | x) q(p | x), coordinate ascent (CAVI) on the ELBO:
                  log q(c) = sum_p q(p) log p(x, c, p) + const,
                  log q(p) = sum_c q(c) log p(x, c, p) + const.
Everything is a pure function of explicit arrays and keys.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import keys

SQRT2 = math.sqrt(2.0)

# The paper's generating supercluster means (a square of side 2 sqrt 2): the 16 petal centres
# form a 4 x 4 grid of spacing sqrt 2, so whole superclusters can be mis-assigned by shifting
# petals (local optima), while the true means remain identifiable.
GENERATING_MEANS = ((-SQRT2, -SQRT2), (SQRT2, SQRT2), (SQRT2, -SQRT2), (-SQRT2, SQRT2))


@dataclasses.dataclass(frozen=True)
class HierarchicalMixture:
    """Static settings of the model (hashable: a static argument of jitted functions).

    Attributes:
      n_clusters: C superclusters; n_petals: P petals per supercluster.
      sigma: standard deviation of every petal (isotropic); radius: |o_p|.
    """

    n_clusters: int = 4
    n_petals: int = 4
    sigma: float = 0.25
    radius: float = 1.0

    def __post_init__(self):
        if self.n_clusters < 1 or self.n_petals < 1:
            raise ValueError(f"HierarchicalMixture: n_clusters and n_petals must be >= 1, got "
                             f"{self.n_clusters} and {self.n_petals}")
        if not self.sigma > 0:
            raise ValueError(f"HierarchicalMixture: sigma must be > 0, got {self.sigma}")

    @property
    def n_latents(self) -> int:
        return self.n_clusters * self.n_petals

    # -- structure ----------------------------------------------------------------------------
    def petal_offsets(self) -> jax.Array:
        """float32[P, 2]: o_p = r (cos a_p, sin a_p), a_p = (p + 0.5) 2 pi / P."""
        a = (np.arange(self.n_petals) + 0.5) * 2.0 * np.pi / self.n_petals
        return jnp.asarray(self.radius * np.stack([np.cos(a), np.sin(a)], 1), jnp.float32)

    def component_means(self, theta: jax.Array) -> jax.Array:
        """float[C, P, 2]: mu_c + o_p."""
        return theta[:, None, :] + self.petal_offsets()[None, :, :]

    def all_latents(self) -> jax.Array:
        """int32[C*P, 2]: every z = (c, p), in flat order c * P + p."""
        c, p = np.meshgrid(np.arange(self.n_clusters), np.arange(self.n_petals), indexing="ij")
        return jnp.asarray(np.stack([c.ravel(), p.ravel()], 1), jnp.int32)

    def _const(self):
        return (-math.log(self.n_clusters) - math.log(self.n_petals)
                - math.log(2.0 * math.pi * self.sigma ** 2))

    # -- densities ----------------------------------------------------------------------------
    def log_joint(self, theta: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p_theta(x, z) for one point x float[2] and one latent z int[2] = (c, p); float[].

        Differentiable in theta; indices are clipped, so a padded/invalid z never indexes out of
        range.
        """
        c = jnp.clip(z[0], 0, self.n_clusters - 1)
        p = jnp.clip(z[1], 0, self.n_petals - 1)
        m = theta[c] + self.petal_offsets()[p]
        d2 = jnp.sum((x - m) ** 2)
        return self._const() - d2 / (2.0 * self.sigma ** 2)

    def log_joint_table(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """float[N, C, P]: log p_theta(x_i, c, p) for every data point x float[N, 2]."""
        m = self.component_means(theta)
        d2 = jnp.sum((x[:, None, None, :] - m[None]) ** 2, axis=-1)
        return self._const() - d2 / (2.0 * self.sigma ** 2)

    def log_marginal(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """float[N]: log p_theta(x_i) = logsumexp_{c,p} log p_theta(x_i, c, p)."""
        t = self.log_joint_table(theta, x)
        return jax.nn.logsumexp(t.reshape(t.shape[0], -1), axis=-1)

    def loglik(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """float[]: mean per-point log-likelihood (1/N) sum_i log p_theta(x_i)."""
        return jnp.mean(self.log_marginal(theta, x))

    def exact_posterior(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """float[N, C*P]: p_theta(z | x_i), flat latent order c * P + p."""
        t = self.log_joint_table(theta, x)
        return jax.nn.softmax(t.reshape(t.shape[0], -1), axis=-1)

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, theta: jax.Array, key: jax.Array, n: int) -> Tuple[jax.Array, jax.Array]:
        """(x float32[n, 2], z int32[n, 2]) drawn from p_theta(x, z)."""
        kc, kp, ke = jax.random.split(key, 3)
        c = jax.random.randint(kc, (n,), 0, self.n_clusters)
        p = jax.random.randint(kp, (n,), 0, self.n_petals)
        m = theta[c] + self.petal_offsets()[p]
        x = m + self.sigma * jax.random.normal(ke, (n, 2), m.dtype)
        return x.astype(jnp.float32), jnp.stack([c, p], 1).astype(jnp.int32)

    def init_means(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """float32[C, 2]: C distinct data points chosen at random (the paper's initialization)."""
        idx = jax.random.choice(key, x.shape[0], (self.n_clusters,), replace=False)
        return x[idx].astype(jnp.float32)

    # -- E-steps of the baselines ---------------------------------------------------------------
    def mean_field(self, theta: jax.Array, x: jax.Array, q_c: jax.Array, q_p: jax.Array,
                   sweeps: int) -> Tuple[jax.Array, jax.Array]:
        """``sweeps`` rounds of coordinate ascent on the mean-field ELBO, from q_p.

        Args: q_c float[N, C] (unused on entry: each sweep updates q_c first), q_p float[N, P].
        Returns the updated (q_c, q_p). Each update is the exact CAVI step
        q(c) propto exp E_{q(p)} log p(x, c, p), q(p) propto exp E_{q(c)} log p(x, c, p).
        """
        t = self.log_joint_table(theta, x)

        def sweep(_, qs):
            _, qp = qs
            qc = jax.nn.softmax(jnp.einsum("ncp,np->nc", t, qp), axis=-1)
            qp = jax.nn.softmax(jnp.einsum("ncp,nc->np", t, qc), axis=-1)
            return qc, qp

        return jax.lax.fori_loop(0, sweeps, sweep, (q_c, q_p))

    def elbo_mean_field(self, theta, x, q_c, q_p) -> jax.Array:
        """float[]: mean_i E_{q(c)q(p)}[log p(x_i, c, p)] + H(q(c)) + H(q(p))  (<= loglik)."""
        t = self.log_joint_table(theta, x)
        w = q_c[:, :, None] * q_p[:, None, :]
        ent = lambda q: -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), -1)
        return jnp.mean(jnp.sum(w * t, axis=(1, 2)) + ent(q_c) + ent(q_p))

    def closed_form_m_step(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """float[C, 2]: argmax_theta sum_i sum_z w_iz log p_theta(x_i, z), w float[N, C*P].

        mu_c = sum_{i,p} w_icp (x_i - o_p) / sum_{i,p} w_icp (the classical EM update).
        """
        w = w.reshape(x.shape[0], self.n_clusters, self.n_petals)
        shifted = x[:, None, :] - self.petal_offsets()[None]  # [N, P, 2]
        num = jnp.einsum("ncp,npd->cd", w, shifted)
        den = jnp.sum(w, axis=(0, 2))[:, None]
        return num / jnp.maximum(den, 1e-30)


def generate_data(model: HierarchicalMixture, seed: int, n: int = 4000,
                  means=GENERATING_MEANS) -> Tuple[np.ndarray, np.ndarray]:
    """(x float32[n, 2], z int32[n, 2]) from the generating means, a pure function of the seed."""
    key = keys.tagged(jax.random.PRNGKey(seed), keys.MIXTURE_DATA)
    x, z = model.sample(jnp.asarray(means, jnp.float32), key, n)
    return np.asarray(x), np.asarray(z)


def latent_to_state(z: jax.Array):
    """The terminal ``SeqState`` of Sequence(length=2) for z int[2] = (c, p)."""
    from gfnem_jax.envs.sequence import SeqState
    return SeqState(z.astype(jnp.int32), jnp.asarray(z.shape[-1], jnp.int32))
