"""Local scores of a node given its parents, structure priors, and the table of all of them.

A score is modular: ``log R(G) = log p(G) + log p(D | G) = sum_j score(j, pa_j)``. Each scorer
here is a function ``local(j, parents) -> float`` of a data matrix X float64[N, d].

BGe (Geiger & Heckerman 1994/2002, in the form of Kuipers, Moffa & Heckerman 2014): a
Normal-Wishart prior with mean nu = 0, alpha_mu = 1, alpha_w = d + 2 and T = t I,
t = alpha_mu (alpha_w - d - 1) / (alpha_mu + 1). With the posterior matrix

    R = T + sum_n (x_n - xbar)(x_n - xbar)^T + (N alpha_mu / (N + alpha_mu)) (xbar - nu)(xbar - nu)^T

and l = |pa_j|, a = N + alpha_w - d:

    score(j, pa) = 1/2 [log alpha_mu - log(N + alpha_mu)] - N/2 log pi
                   + log Gamma((a + l + 1)/2) - log Gamma((alpha_w - d + l + 1)/2)
                   + (alpha_w - d + 2l + 1)/2 log t
                   + (a + l)/2 log det R[pa, pa] - (a + l + 1)/2 log det R[pa+j, pa+j]

(= log p(D^{pa+j}) - log p(D^{pa}), each a Normal-Wishart marginal likelihood; the BGe score is
score-equivalent: Markov-equivalent DAGs get the same total).

Linear-Gaussian (closed form): X_j = X_pa w + eps, w ~ N(prior_mean, prior_scale^2 I),
eps ~ N(0, obs_scale^2 I), so x_j ~ N(X_pa prior_mean 1, obs_scale^2 I_N + prior_scale^2 X_pa X_pa^T),
evaluated by the Woodbury identity in O(N l^2 + l^3).

BDe (Heckerman, Geiger & Chickering 1995), for discrete data x in {0..r_j - 1}, in its BDeu form with
equivalent sample size ``ess``: with q = prod_{i in pa} r_i parent configurations, N_jck the count of
x_j = k among the rows whose parents are in configuration c, a_c = ess / q, a_ck = ess / (q r_j):

    score(j, pa) = sum_c [log Gamma(a_c) - log Gamma(a_c + N_jc)
                          + sum_k (log Gamma(a_ck + N_jck) - log Gamma(a_ck))]

(score-equivalent as well).

Priors (added to each local score, so they stay modular): ``uniform`` (0), ``edge`` (log p(G) =
-edge_penalty |E|, i.e. -edge_penalty |pa_j| per node), ``erdos_renyi`` (each of the d(d-1)
ordered pairs an edge with probability p = expected_edges / (d(d-1)/2): |pa| log p + (d-1-|pa|)
log(1-p) per node; unnormalised over DAGs, which the posterior does not need).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import gammaln

from gfnem_jax.envs.dag import parent_code_weights, parents_of_code

SCORES = ("bge", "lingauss", "bde")
PRIORS = ("uniform", "edge", "erdos_renyi")
MAX_TABLE_D = 14  # d 2^(d-1) local scores: 114,688 at d = 14


def _logdet(m: np.ndarray) -> float:
    sign, ld = np.linalg.slogdet(m)
    if sign <= 0:
        raise ValueError("a scatter matrix is not positive definite")
    return float(ld)


def bge(x: np.ndarray, alpha_mu: float = 1.0, alpha_w: float = None,
        mean_obs: np.ndarray = None) -> Callable:
    """The BGe local score ``local(j, parents)`` of data x float[N, d] (formula: module doc).

    alpha_w defaults to d + 2 and must exceed d - 1; mean_obs (nu) defaults to zeros."""
    R, a, const = bge_statistics(x, alpha_mu, alpha_w, mean_obs)

    def local(j: int, parents) -> float:
        pa = list(parents)
        fam = pa + [j]
        l = len(pa)
        term = -0.5 * (a + l + 1) * _logdet(R[np.ix_(fam, fam)])
        if l:
            term += 0.5 * (a + l) * _logdet(R[np.ix_(pa, pa)])
        return float(const[l] + term)

    return local


def bge_statistics(x: np.ndarray, alpha_mu: float = 1.0, alpha_w: float = None,
                   mean_obs: np.ndarray = None):
    """(R float64[d, d], a = N + alpha_w - d, const float64[d]): what the BGe score of data x
    needs (module doc): score(j, pa) = const[l] + (a + l)/2 log det R[pa, pa]
    - (a + l + 1)/2 log det R[pa+j, pa+j], l = len(pa)."""
    x = np.asarray(x, np.float64)
    N, d = x.shape
    alpha_w = d + 2.0 if alpha_w is None else float(alpha_w)
    if not alpha_mu > 0:
        raise ValueError(f"bge: alpha_mu must be > 0, got {alpha_mu}")
    if not alpha_w > d - 1:
        raise ValueError(f"bge: alpha_w must be > d - 1 = {d - 1}, got {alpha_w}")
    nu = np.zeros(d) if mean_obs is None else np.asarray(mean_obs, np.float64)
    t = alpha_mu * (alpha_w - d - 1) / (alpha_mu + 1)
    if not t > 0:
        raise ValueError(f"bge: t = alpha_mu (alpha_w - d - 1) / (alpha_mu + 1) must be > 0 "
                         f"(alpha_w > d + 1), got alpha_w={alpha_w}")
    xbar = x.mean(0)
    xc = x - xbar
    R = (t * np.eye(d) + xc.T @ xc
         + (N * alpha_mu / (N + alpha_mu)) * np.outer(xbar - nu, xbar - nu))
    a = N + alpha_w - d
    ls = np.arange(d)
    const = (0.5 * (math.log(alpha_mu) - math.log(N + alpha_mu)) - 0.5 * N * math.log(math.pi)
             + gammaln(0.5 * (a + ls + 1)) - gammaln(0.5 * (alpha_w - d + ls + 1))
             + 0.5 * (alpha_w - d + 2 * ls + 1) * math.log(t))
    return R, float(a), const


def lingauss(x: np.ndarray, prior_mean: float = 0.0, prior_scale: float = 1.0,
             obs_scale: float = math.sqrt(0.1)) -> Callable:
    """The linear-Gaussian marginal likelihood ``local(j, parents)`` = log N(x_j; X_pa m 1,
    obs_scale^2 I + prior_scale^2 X_pa X_pa^T) of data x float[N, d] (Woodbury)."""
    x = np.asarray(x, np.float64)
    N, _ = x.shape
    if not (prior_scale > 0 and obs_scale > 0):
        raise ValueError(f"lingauss: prior_scale and obs_scale must be > 0, got "
                         f"{prior_scale}, {obs_scale}")
    s2, t2 = obs_scale ** 2, prior_scale ** 2

    def local(j: int, parents) -> float:
        pa = list(parents)
        y = x[:, j]
        X = x[:, pa]
        r = y - X.sum(1) * prior_mean
        l = len(pa)
        # Sigma = s2 I + t2 X X^T;  A = I / t2 + X^T X / s2
        A = np.eye(l) / t2 + X.T @ X / s2
        logdet = N * math.log(s2) + l * math.log(t2) + (_logdet(A) if l else 0.0)
        u = X.T @ r / s2
        quad = r @ r / s2 - (u @ np.linalg.solve(A, u) if l else 0.0)
        return float(-0.5 * (N * math.log(2 * math.pi) + logdet + quad))

    return local


def bde(x: np.ndarray, ess: float = 1.0, arities=None) -> Callable:
    """The BDeu local score ``local(j, parents)`` of discrete data x int[N, d] with values in
    {0..r_j - 1} (``arities``: r float[d]; default: each column's maximum + 1). Formula: module doc."""
    x = np.asarray(x)
    if not np.all(np.equal(np.mod(x, 1), 0)) or np.any(x < 0):
        raise ValueError("bde: the data must be non-negative integers (category codes)")
    x = x.astype(np.int64)
    N, d = x.shape
    r = x.max(0) + 1 if arities is None else np.asarray(arities, np.int64)
    if np.any(x >= r[None, :]):
        raise ValueError("bde: a value is not below its variable's arity")
    if not ess > 0:
        raise ValueError(f"bde: ess must be > 0, got {ess}")

    def local(j: int, parents) -> float:
        pa = list(parents)
        q = int(np.prod(r[pa])) if pa else 1
        c = np.zeros(N, np.int64)
        for i in pa:  # mixed-radix code of each row's parent configuration
            c = c * r[i] + x[:, i]
        counts = np.zeros((q, int(r[j])))
        np.add.at(counts, (c, x[:, j]), 1.0)
        a_c, a_ck = ess / q, ess / (q * r[j])
        return float(np.sum(gammaln(a_c) - gammaln(a_c + counts.sum(1)))
                     + np.sum(gammaln(a_ck + counts) - gammaln(a_ck)))

    return local


def prior_term(d: int, n_parents: np.ndarray, prior: str = "uniform", edge_penalty: float = 1.0,
               expected_edges: float = 1.0) -> np.ndarray:
    """float64[...]: the structure prior's share of a node with ``n_parents`` parents."""
    k = np.asarray(n_parents, np.float64)
    if prior == "uniform":
        return np.zeros_like(k)
    if prior == "edge":
        return -float(edge_penalty) * k
    if prior == "erdos_renyi":
        m = d * (d - 1) / 2
        if not 0 < expected_edges < m:
            raise ValueError(f"expected_edges must be in (0, d(d-1)/2 = {m:g}) for prior "
                             f"erdos_renyi, got {expected_edges}")
        p = expected_edges / m
        return k * math.log(p) + (d - 1 - k) * math.log1p(-p)
    raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")


def scorer(x: np.ndarray, score: str = "bge", **options) -> Callable:
    """The local score of name ``score`` (one of SCORES) on data x, with its options."""
    if score == "bge":
        return bge(x, **{k: v for k, v in options.items() if k in ("alpha_mu", "alpha_w", "mean_obs")})
    if score == "lingauss":
        return lingauss(x, **{k: v for k, v in options.items()
                              if k in ("prior_mean", "prior_scale", "obs_scale")})
    if score == "bde":
        return bde(x, **{k: v for k, v in options.items() if k in ("ess", "arities")})
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def local_table(local: Callable, d: int, prior: str = "uniform", **prior_options) -> np.ndarray:
    """float64[d, 2^(d-1)]: table[j, c] = local(j, parents_of_code(d, j, c)) + prior share, for
    every node and every parent set (``envs.dag.parent_codes`` numbers them)."""
    if d > MAX_TABLE_D:
        raise ValueError(f"a local-score table needs d <= {MAX_TABLE_D} (d 2^(d-1) entries), got d={d}")
    C = 1 << (d - 1)
    counts = np.asarray([bin(c).count("1") for c in range(C)])
    table = np.empty((d, C))
    for j in range(d):
        for c in range(C):
            table[j, c] = local(j, parents_of_code(d, j, c))
    return table + prior_term(d, counts, prior, **prior_options)[None, :]


def graph_score(table: np.ndarray, adj: np.ndarray) -> np.ndarray:
    """float64[...]: log R(G) = sum_j table[j, code_j(G)] for uint8/bool[..., d, d] graphs (host)."""
    adj = np.asarray(adj).astype(np.int64)
    d = adj.shape[-1]
    codes = np.sum(adj * parent_code_weights(d), axis=-2)  # [..., d]
    return np.sum(np.asarray(table)[np.arange(d), codes], axis=-1)


def delta_score(table: np.ndarray, adj: np.ndarray, i: int, j: int) -> float:
    """log R(G + i->j) - log R(G) = table[j, code_j + 2^(i - [i > j])] - table[j, code_j]:
    only node j's parent set changes (the edge i -> j must be absent)."""
    adj = np.asarray(adj).astype(np.int64)
    if adj[i, j]:
        raise ValueError(f"the edge {i} -> {j} is already present")
    d = adj.shape[-1]
    w = parent_code_weights(d)
    c = int(np.sum(adj[:, j] * w[:, j]))
    return float(table[j, c + w[i, j]] - table[j, c])
