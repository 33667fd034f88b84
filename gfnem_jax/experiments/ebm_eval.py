"""Evaluation of energy models on {0,1}^d and of their GFlowNet samplers.

  exact_sampler_probs   P_F's terminal distribution by DP over all 3^d states (d <= 10),
                        via gfnem_jax.metrics.terminal_distribution.
  is_sampler_log_probs  log P_F(x) for every x (d <= 20) by importance sampling with P_B:
                        P_F(x) = E_{tau ~ P_B(.|x)} [P_F(tau) / P_B(tau | x)] (unbiased in P_F(x);
                        exact when P_F(tau) / P_B(tau|x) is constant over tau, as at TB's optimum).
  sampler_tv            TV(P_F^T, p_phi) = 1/2 sum_x |P_F^T(x) - p_phi(x)|: exact DP for d <= 10,
                        the IS estimate above for 10 < d <= 20 (TV of a noisy estimate is biased up).
  mmd                   squared MMD with the exponentiated-Hamming kernel
                        K(x, y) = exp(-H(x, y) / (d * bandwidth)) (unbiased U-statistic).
  ais_log_z             annealed importance sampling from the uniform distribution on {0,1}^d to
                        p_phi, f_beta = -beta E, one Gibbs sweep per temperature (geometric path):
                        log Z ≈ d log 2 + logmeanexp_chains sum_t (beta_t - beta_{t-1}) (-E(x_{t-1})).
  heatmaps              PNG with data / learned density / samples in the 2-D plane (Gray-decoded).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import mcmc, metrics
from gfnem_jax.data import toy2d
from gfnem_jax.envs.bits import MAX_ENUM_D, BitsState, all_binary
from gfnem_jax.models import energy
from gfnem_jax.sampling import Exploration, backward_rollout, forward_rollout


@partial(jax.jit, static_argnums=(0, 1))
def exact_sampler_probs(env, policy, params) -> jax.Array:
    """float[2^d]: P_F's exact terminal distribution, in terminal (binary) index order (d <= 10)."""
    if env.d > MAX_ENUM_D:
        raise ValueError(f"the exact sampler distribution needs d <= {MAX_ENUM_D}, got d={env.d}")
    table = metrics.transition_table(env)
    P = metrics.terminal_distribution(env, policy, params, table)
    return P[env.terminal_state_indices()]


@partial(jax.jit, static_argnums=(0, 1, 4, 5))
def is_sampler_log_probs(env, policy, params, key, n_paths: int = 1, chunk: int = 4096) -> jax.Array:
    """float[2^d]: log of the IS estimate of P_F(x) (``n_paths`` backward paths per x), d <= 20."""
    term = env.all_terminals()
    n = term.bits.shape[0]
    c = min(chunk, n)
    blocks = term.bits.reshape(n // c, c, env.d)

    def one(args):
        i, xb = args
        def path(m):
            tr = backward_rollout(env, policy, params, jax.random.fold_in(key, i * n_paths + m),
                                  BitsState(xb))
            return jnp.sum(tr.log_pf, 1) - jnp.sum(tr.log_pb, 1)
        lw = jax.vmap(path)(jnp.arange(n_paths))  # [M, c]
        return jax.nn.logsumexp(lw, 0) - math.log(n_paths)

    return jax.lax.map(one, (jnp.arange(n // c), blocks)).reshape(n)


def sampler_tv(ebm, gfn_params, phi, key, n_paths: int = 1):
    """(TV between the GFlowNet's terminal distribution and p_phi^(1/T), method string)."""
    env = ebm.env
    logp = energy.log_probs(ebm.model, phi) / env.temperature
    p = jnp.exp(logp - jax.nn.logsumexp(logp))
    if env.d <= MAX_ENUM_D:
        q, how = exact_sampler_probs(env, ebm.policy, gfn_params), "exact"
    else:
        lq = is_sampler_log_probs(env, ebm.policy, gfn_params, key, n_paths)
        q, how = jnp.exp(lq), f"is{n_paths}"
    return float(0.5 * jnp.sum(jnp.abs(q - p))), how


@partial(jax.jit, static_argnums=(0, 4))
def _sample_chunk(ebm, gfn_params, phi, key, b):
    tr = forward_rollout(ebm.env, ebm.policy, gfn_params, key, b, ebm.env.log_reward, phi, None,
                         Exploration(), sampling_pass=True)
    return tr.terminal.bits.astype(jnp.uint8)


def sample_gfn(ebm, gfn_params, phi, key, n: int, chunk: int = 4096) -> np.ndarray:
    """uint8[n, d]: terminal states drawn from P_F (no exploration), in jitted chunks."""
    b = min(chunk, n)
    outs = [np.asarray(_sample_chunk(ebm, gfn_params, phi, jax.random.fold_in(key, i), b))
            for i in range(0, n, b)]
    return np.concatenate(outs)[:n]


def sample_exact(model, phi, key, n: int) -> np.ndarray:
    """uint8[n, d]: exact samples of p_phi by enumeration (d <= 20), by inversion of the CDF over
    the 2^d states: O(2^d + n) memory (a categorical draw over 2^d logits per sample would hold
    [n, 2^d])."""
    logp = energy.log_probs(model, phi)
    cdf = jnp.cumsum(jnp.exp(logp - jnp.max(logp)))
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)
    d = model.d
    return np.asarray((idx[:, None] >> jnp.arange(d - 1, -1, -1)) & 1, np.uint8)


def mmd(x, y, bandwidth: float = 0.1) -> float:
    """Squared MMD (unbiased) between {0,1} samples x[n, d] and y[m, d], K = exp(-H / (d bw))."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    d = x.shape[1]

    def k(a, b):
        h = a @ (1 - b).T + (1 - a) @ b.T
        return jnp.exp(-h / (d * bandwidth))

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * jnp.mean(kxy))


def ais_log_z(energy_fn, params, key, d: int, n_chains: int = 256, n_temps: int = 1000):
    """(log Z estimate, its standard error by the delta method) for p ∝ exp(-E) on {0,1}^d."""
    betas = jnp.linspace(0.0, 1.0, n_temps + 1)
    x0 = jax.random.bernoulli(jax.random.fold_in(key, -1 & 0x7FFFFFFF), 0.5, (n_chains, d)).astype(jnp.float32)
    e_of = jax.vmap(lambda v: energy_fn(params, v))

    def body(carry, t):
        x, lw = carry
        lw = lw - (betas[t] - betas[t - 1]) * e_of(x)
        fb = lambda p, v: betas[t] * energy_fn(p, v)
        x = mcmc.gibbs_sweep(fb, params, jax.random.fold_in(key, t), x)
        return (x, lw), None

    (_, lw), _ = jax.lax.scan(body, (x0, jnp.zeros(n_chains)), jnp.arange(1, n_temps + 1))
    lz = d * math.log(2.0) + jax.nn.logsumexp(lw) - math.log(n_chains)
    w = jnp.exp(lw - jnp.max(lw))
    se = jnp.std(w) / (jnp.mean(w) * math.sqrt(n_chains))
    return float(lz), float(se)


def ais_nll(model, phi, x, key, n_chains: int = 256, n_temps: int = 1000):
    """(NLL estimate mean E(x) + log Z_AIS, standard error of log Z_AIS)."""
    lz, se = ais_log_z(model.energy, phi, key, model.d, n_chains, n_temps)
    return float(jnp.mean(energy.energies(model, phi, x))) + lz, se


def summarize(ebm, gfn_params, phi, test, key, gfn_based: bool = True, n_mmd: int = 2000) -> dict:
    """test_nll (exact for d <= 20, else AIS), sampler_tv (GFlowNet methods, d <= 20), mmd
    (model samples vs held-out data: GFlowNet samples for GFlowNet methods, else exact or none)."""
    d = ebm.d
    out = {}
    test = np.asarray(test)
    if d <= energy.MAX_EXACT_D:
        out["test_nll"] = float(energy.exact_nll(ebm.model, phi, test))
        out["test_nll_method"] = "exact"
    else:
        out["test_nll"], out["log_z_se"] = ais_nll(ebm.model, phi, test, jax.random.fold_in(key, 1))
        out["test_nll_method"] = "ais"
    if gfn_based and d <= energy.MAX_EXACT_D:
        out["sampler_tv"], out["sampler_tv_method"] = sampler_tv(ebm, gfn_params, phi, jax.random.fold_in(key, 2))
    else:
        out["sampler_tv"] = None
    ref = test[: n_mmd]
    if gfn_based:
        s = sample_gfn(ebm, gfn_params, phi, jax.random.fold_in(key, 3), ref.shape[0])
        out["mmd"] = mmd(s, ref)
    elif d <= energy.MAX_EXACT_D:
        out["mmd"] = mmd(sample_exact(ebm.model, phi, jax.random.fold_in(key, 3), ref.shape[0]), ref)
    return out


def _hist2d(x, bits):
    c = toy2d.cells(np.asarray(x))
    img = np.zeros((2 ** bits, 2 ** bits))
    np.add.at(img, (c[:, 1], c[:, 0]), 1)
    return img / max(img.sum(), 1)


def density_image(model, phi) -> np.ndarray:
    """float[2^b, 2^b]: p_phi on the grid (rows = second coordinate), for d = 2 b <= 20."""
    bits = model.d // 2
    p = np.exp(np.asarray(energy.log_probs(model, phi), np.float64))
    c = toy2d.cells(np.asarray(all_binary(model.d)))
    img = np.zeros((2 ** bits, 2 ** bits))
    img[c[:, 1], c[:, 0]] = p
    return img


def heatmaps(ebm, gfn_params, phi, data, key, path: str, gfn_based: bool = True, n: int = 20000) -> None:
    """Write a PNG: data histogram, learned density p_phi, samples (GFlowNet, or exact p_phi)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = ebm.d // 2
    if gfn_based:
        s, title = sample_gfn(ebm, gfn_params, phi, key, n), "GFlowNet samples"
    else:
        s, title = sample_exact(ebm.model, phi, key, n), "exact samples of p_phi"
    imgs = [(_hist2d(data, bits), "data"), (density_image(ebm.model, phi), "learned density"), (_hist2d(s, bits), title)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (img, t) in zip(axes, imgs):
        ax.imshow(img, origin="lower", extent=(-toy2d.RANGE, toy2d.RANGE, -toy2d.RANGE, toy2d.RANGE), cmap="viridis")
        ax.set_title(t)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight", pad_inches=0.15)  # titles inside the image
    plt.close(fig)
