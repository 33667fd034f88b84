"""The joint posterior over structure and parameters, P(G, W | D) = P(G | D) p(W | G, D), for the
linear-Gaussian model of ``scores.lingauss``:

    x_j = sum_{i in pa(j)} W_ij x_i + eps_j,   eps_j ~ N(0, obs_scale^2),
    W_ij ~ N(prior_mean, prior_scale^2) independently.

Given G, the weights into each node are a Bayesian linear regression with the closed-form
Gaussian posterior (X = x[:, pa(j)], y = x[:, j], s2 = obs_scale^2, t2 = prior_scale^2):

    precision A_j = I / t2 + X^T X / s2,    mean m_j = A_j^{-1} (X^T y / s2 + prior_mean 1 / t2),

independent across nodes. So a sample of (G, W) is a graph from the GFlowNet (trained with
``--score lingauss``, whose marginal likelihood integrates exactly these weights out) followed by
W_j ~ N(m_j, A_j^{-1}) for every node.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple

import numpy as np


class WeightPosterior(NamedTuple):
    mean: np.ndarray  # float64[d, d]: E[W_ij | G, D] (0 where i -> j is not an edge)
    cov: List[np.ndarray]  # per node j: float64[|pa_j|, |pa_j|], in increasing parent order


def weight_posterior(x: np.ndarray, adj: np.ndarray, prior_mean: float = 0.0,
                     prior_scale: float = 1.0, obs_scale: float = math.sqrt(0.1)) -> WeightPosterior:
    """The Gaussian posterior of the edge weights of graph ``adj`` [d, d] given data x [N, d]."""
    x = np.asarray(x, np.float64)
    adj = np.asarray(adj).astype(bool)
    d = adj.shape[0]
    s2, t2 = obs_scale ** 2, prior_scale ** 2
    mean, cov = np.zeros((d, d)), []
    for j in range(d):
        pa = np.flatnonzero(adj[:, j])
        X, y = x[:, pa], x[:, j]
        A = np.eye(len(pa)) / t2 + X.T @ X / s2
        C = np.linalg.inv(A)
        mean[pa, j] = C @ (X.T @ y / s2 + prior_mean / t2)
        cov.append(0.5 * (C + C.T))
    return WeightPosterior(mean, cov)


def sample_weights(x: np.ndarray, graphs: np.ndarray, seed: int = 0, **model) -> np.ndarray:
    """float64[n, d, d]: one draw of W ~ p(W | G, D) for each graph of ``graphs`` [n, d, d] (e.g.
    the output of ``gfnem sample``); zero where there is no edge. ``model``: prior_mean,
    prior_scale, obs_scale as in ``weight_posterior``."""
    graphs = np.asarray(graphs)
    rng = np.random.default_rng(seed)
    out = np.zeros(graphs.shape, np.float64)
    cache = {}
    for k, g in enumerate(graphs):
        key = g.astype(np.uint8).tobytes()
        if key not in cache:
            cache[key] = weight_posterior(x, g, **model)
        post = cache[key]
        for j in range(g.shape[0]):
            pa = np.flatnonzero(g[:, j])
            if len(pa):
                out[k, pa, j] = rng.multivariate_normal(post.mean[pa, j], post.cov[j])
    return out
