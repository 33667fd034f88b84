"""Observations for structure learning: simulated, or read from a user's file.

``simulate``: an Erdos-Renyi DAG (each of the d(d-1)/2 edges of a random node order present with
probability ``edge_prob``) with linear-Gaussian conditionals

    X_j = sum_{i in pa(j)} W_ij X_i + eps_j,   W_ij ~ N(0, 1),   eps_j ~ N(0, noise_scale^2),

sampled by ancestral sampling, all from one ``numpy.random.default_rng(seed)``.
``simulate_discrete``: the same random DAG with categorical conditionals: each node takes ``arity``
values, and each configuration of its parents has its own distribution, drawn from a symmetric
Dirichlet(``concentration``).

``load``: a float matrix [N, d] from ``.npy`` or ``.csv`` (comma-separated, an optional header line
of names); any problem is one ``ValueError`` line naming the file.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np


class Simulated(NamedTuple):
    adj: np.ndarray  # uint8[d, d], adj[i, j] = 1 for the edge i -> j
    weights: np.ndarray  # float64[d, d], 0 where there is no edge
    data: np.ndarray  # float64[N, d]


def random_dag(d: int, edge_prob: float, rng: np.random.Generator) -> np.ndarray:
    """uint8[d, d]: an Erdos-Renyi DAG: a random order, each forward pair an edge w.p. edge_prob."""
    order = rng.permutation(d)
    upper = np.triu(rng.random((d, d)) < edge_prob, 1)
    adj = np.zeros((d, d), np.uint8)
    adj[np.ix_(order, order)] = upper  # edge order[a] -> order[b] for a < b
    return adj


def simulate(d: int, n: int, edge_prob: float = 0.5, seed: int = 0,
             noise_scale: float = 0.1) -> Simulated:
    """A seeded Erdos-Renyi linear-Gaussian DAG and ``n`` observations of it (see the module)."""
    if d < 2 or n < 1:
        raise ValueError(f"simulate needs d >= 2 and n >= 1, got d={d}, n={n}")
    if not 0 <= edge_prob <= 1:
        raise ValueError(f"edge_prob must be in [0, 1], got {edge_prob}")
    rng = np.random.default_rng(seed)
    adj = random_dag(d, edge_prob, rng)
    w = rng.normal(0.0, 1.0, (d, d)) * adj
    x = np.zeros((n, d))
    for j in topological_order(adj):
        x[:, j] = x @ w[:, j] + rng.normal(0.0, noise_scale, n)
    return Simulated(adj, w, x)


def simulate_discrete(d: int, n: int, edge_prob: float = 0.5, seed: int = 0, arity: int = 2,
                      concentration: float = 1.0) -> Simulated:
    """A seeded Erdos-Renyi DAG with categorical conditionals and ``n`` observations, int codes in
    {0..arity-1} stored as float64[N, d] (``weights`` is all zeros: there are none)."""
    if d < 2 or n < 1 or arity < 2:
        raise ValueError(f"simulate_discrete needs d >= 2, n >= 1, arity >= 2, got {d}, {n}, {arity}")
    if not 0 <= edge_prob <= 1:
        raise ValueError(f"edge_prob must be in [0, 1], got {edge_prob}")
    rng = np.random.default_rng(seed)
    adj = random_dag(d, edge_prob, rng)
    x = np.zeros((n, d), np.int64)
    for j in topological_order(adj):
        pa = np.flatnonzero(adj[:, j])
        cpt = rng.dirichlet(np.full(arity, concentration), size=arity ** len(pa))  # [q, arity]
        c = np.zeros(n, np.int64)
        for i in pa:
            c = c * arity + x[:, i]
        u = rng.random(n)[:, None]
        x[:, j] = np.minimum((u > np.cumsum(cpt[c], 1)).sum(1), arity - 1)
    return Simulated(adj, np.zeros((d, d)), x.astype(np.float64))


def topological_order(adj: np.ndarray) -> list:
    """Nodes of a DAG in an order where every parent comes before its children."""
    adj = np.asarray(adj, bool)
    indeg, order = adj.sum(0).astype(int), []
    ready = [j for j in range(adj.shape[0]) if indeg[j] == 0]
    while ready:
        u = ready.pop(0)
        order.append(u)
        for v in np.flatnonzero(adj[u]):
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(int(v))
    if len(order) != adj.shape[0]:
        raise ValueError("the graph has a cycle")
    return order


def load(path: str, d: int = None) -> np.ndarray:
    """float64[N, d]: observations from ``path`` (.npy, or .csv with an optional header line).

    ``d``: the number of columns expected (None: any >= 2). ValueError (one line, naming the file)
    when the file is missing, unreadable, not a 2-D table of finite numbers, or has fewer than 2
    rows.
    """
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            x = np.load(path, allow_pickle=False)
        elif ext == ".csv":
            x = _read_csv(path)
        else:
            raise ValueError("expected a .npy or .csv file")
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise ValueError(f"expected numbers, got dtype {x.dtype}")
        x = x.astype(np.float64)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"data file {path!r}: {msg}") from None
    if x.ndim != 2:
        raise ValueError(f"data file {path!r}: expected a 2-D table [observations, variables], "
                         f"got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"data file {path!r}: need at least 2 observations of at least 2 "
                         f"variables, got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"data file {path!r}: has {x.shape[1]} variables, but num_nodes is {d}")
    if not np.all(np.isfinite(x)):
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"data file {path!r}: non-finite value at row {r}, column {c}")
    return x


def _read_csv(path: str) -> np.ndarray:
    with open(path) as f:
        lines = [(k + 1, ln.strip()) for k, ln in enumerate(f) if ln.strip()]
    if not lines:
        raise ValueError("the file is empty")
    try:
        [float(v) for v in lines[0][1].split(",")]
    except ValueError:
        lines = lines[1:]  # a header of names
    rows = []
    for k, ln in lines:
        try:
            rows.append([float(v) for v in ln.split(",")])
        except ValueError:
            raise ValueError(f"line {k}: not comma-separated numbers: {ln[:40]!r}") from None
    if len({len(r) for r in rows}) > 1:
        raise ValueError("rows have different numbers of columns")
    return np.asarray(rows, np.float64)
