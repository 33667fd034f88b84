"""The exact posterior over DAGs (d <= 5, by enumeration) and what is compared with it.

    P(G | D) = exp(log R(G)) / sum_G' exp(log R(G')),   log R(G) = sum_j table[j, code_j(G)],

over the G DAGs of ``envs.dag.enumerate_dags(d)`` (25, 543, 29281 for d = 3, 4, 5). Edge marginals
are ``P(i -> j | D) = sum_G P(G | D) adj_G[i, j]``, float[d, d]; the error of a sampler's is the
mean absolute difference over the d(d-1) off-diagonal pairs.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from gfnem_jax.dag.scores import graph_score
from gfnem_jax.envs.dag import enumerate_dags


def exact_posterior(table: np.ndarray):
    """(adj bool[G, d, d], log_score float64[G], posterior float64[G]) of a local-score table
    float[d, 2^(d-1)], in ``enumerate_dags`` order (the environment's terminal order)."""
    table = np.asarray(table, np.float64)
    adj = enumerate_dags(table.shape[0])
    s = graph_score(table, adj)
    p = np.exp(s - s.max())
    return adj, s, p / p.sum()


def edge_marginals(adj: np.ndarray, p: np.ndarray) -> np.ndarray:
    """float64[d, d]: sum_G p[G] adj[G] (p: a distribution over the graphs ``adj`` [G, d, d])."""
    return np.einsum("g,gij->ij", np.asarray(p, np.float64), np.asarray(adj, np.float64))


def edge_marginal_error(m: np.ndarray, m_ref: np.ndarray) -> float:
    """Mean |m - m_ref| over the off-diagonal pairs of two [d, d] edge-marginal matrices."""
    d = m.shape[0]
    off = ~np.eye(d, dtype=bool)
    return float(np.abs(np.asarray(m) - np.asarray(m_ref))[off].mean())


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats, float64 on host (0 <= JSD <= log 2)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * (np.log(a[nz]) - np.log(m[nz]))))

    return 0.5 * kl(p) + 0.5 * kl(q)


def write_npz(path: str, adj: np.ndarray, log_score: np.ndarray, posterior: np.ndarray,
              sampler: np.ndarray) -> Dict[str, float]:
    """Write ``path`` (.npz) with every DAG's adjacency uint8[G, d, d], its log score float64[G],
    the exact posterior float64[G] and the sampler's exact probability float64[G]; returns the
    JSD and edge-marginal error between the last two (recomputed in float64)."""
    sampler = np.asarray(sampler, np.float64)
    sampler = sampler / sampler.sum()
    tmp = path + ".tmp.npz"
    np.savez(tmp, adjacency=np.asarray(adj, np.uint8), log_score=np.asarray(log_score, np.float64),
             posterior=np.asarray(posterior, np.float64), sampler=sampler)
    os.replace(tmp, path)
    return {"jsd": jsd(sampler, posterior),
            "edge_error": edge_marginal_error(edge_marginals(adj, sampler),
                                              edge_marginals(adj, posterior))}
