"""Directed acyclic graphs over d nodes, built one edge at a time (DAG-GFlowNet, Deleu et al. 2022).

State: ``adj`` bool[d, d] (``adj[i, j]``: the edge i -> j), ``closure`` bool[d, d] (the reflexive
transitive closure: ``closure[u, v]`` iff v is reachable from u, the diagonal always True) and
``done`` bool[]. The initial state is the empty graph.

Forward actions: ``a < d*d`` adds the edge ``i -> j`` with ``i = a // d, j = a % d``; it is legal
iff the edge is absent and creates no cycle, i.e. j does not reach i:

    forward_mask[:d*d] = ~(adj | closure.T).reshape(-1)   (the diagonal excluded by closure[i, i])

``a = d*d`` stops (moves the graph to its terminal copy; legal while not done). Adding ``i -> j``
updates the closure in O(d^2): every u reaching i now reaches every v reached from j,

    closure <- closure | outer(closure[:, i], closure[j, :]).

Backward actions: ``b < d*d`` removes a present edge (legal while it is present and the state is
not terminal; the closure is recomputed by ceil(log2 d) boolean squarings, O(d^3 log d)), ``b =
d*d`` undoes the stop (the only legal backward action at a terminal state). With a uniform P_B a
non-terminal graph with k edges has P_B = 1/k for each edge, and a terminal one P_B(undo stop) = 1.
A complete trajectory has at most ``d(d-1)/2 + 1`` steps (the most edges of a DAG, then stop).
With ``max_edges`` K the edges are illegal once a graph has K (the support is the DAGs of at most K
edges, the posterior restricted to them) and trajectories have at most K + 1 steps: at d = 50 the
rollout's ``lax.scan`` is then K + 1 steps long instead of 1,226.

Reward: modular, ``log R(G) = sum_j local[j, code_j(G)]`` where ``local`` float32[d, 2^(d-1)] is
a table of local scores (``gfnem_jax.dag.scores``: log p(D_j | D_pa) + log prior) and
``code_j(G) = sum_{i in pa_j} 2^(i - [i > j])`` numbers node j's parent set among the d-1 other
nodes. The table is the environment's reward parameter (``default_params``). For d too large for
a table, ``bge`` holds the BGe statistics (R, a, const, offset; ``dag.scores.bge_statistics``) and
each local score is computed per graph from two masked log-determinants (``bge_local_scores``):
log det R[pa, pa] = log det of R with the rows and columns outside pa replaced by the identity.

Enumeration (d <= 5: 25, 543, 29281 DAGs for d = 3, 4, 5): every DAG's adjacency bitmask
``sum_{i,j} adj[i, j] 2^(i d + j)`` sorted once; a state's index is its bitmask's position in that
table (``searchsorted``), plus G for terminal states (so ``all_states`` is the G non-terminal graphs
then their G terminal copies).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.envs.base import Environment

MAX_ENUM_D = 5  # 29,281 DAGs; d = 6 has 3,781,503
NUM_DAGS = (1, 1, 3, 25, 543, 29281, 3781503)  # OEIS A003024


class DAGState(NamedTuple):
    adj: jax.Array  # bool[d, d]
    closure: jax.Array  # bool[d, d], reflexive transitive closure of adj
    done: jax.Array  # bool[]


def parent_code_weights(d: int) -> np.ndarray:
    """int32[d, d]: W[i, j] = 2^(i - [i > j]) off the diagonal, 0 on it, so that
    ``code_j = sum_i adj[i, j] W[i, j]`` numbers j's parent set in [0, 2^(d-1))."""
    i, j = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    w = (1 << (i - (i > j))).astype(np.int32)
    return np.where(i == j, 0, w).astype(np.int32)


def parent_codes(adj: jax.Array) -> jax.Array:
    """int32[..., d]: the parent-set code of each node of bool[..., d, d] adjacencies."""
    d = adj.shape[-1]
    return jnp.sum(adj.astype(jnp.int32) * jnp.asarray(parent_code_weights(d)), axis=-2)


def parents_of_code(d: int, j: int, code: int):
    """The sorted parent list of node j encoded by ``code`` (inverse of ``parent_codes``)."""
    others = [i for i in range(d) if i != j]
    return [others[b] for b in range(d - 1) if code >> b & 1]


def closure_of(adj: jax.Array) -> jax.Array:
    """bool[d, d]: reflexive transitive closure of one adjacency, by ceil(log2 d) squarings."""
    d = adj.shape[-1]
    c = adj | jnp.eye(d, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(max(d, 2))))):
        c = (c.astype(jnp.int32) @ c.astype(jnp.int32)) > 0
    return c


def bitmask(adj) -> np.ndarray:
    """int64[...]: sum_{i,j} adj[..., i, j] 2^(i d + j) (host numpy)."""
    adj = np.asarray(adj).astype(np.int64)
    d = adj.shape[-1]
    return np.sum(adj.reshape(adj.shape[:-2] + (d * d,)) << np.arange(d * d, dtype=np.int64), -1)


@functools.lru_cache(maxsize=None)
def enumerate_dags(d: int) -> np.ndarray:
    """bool[G, d, d]: every DAG on d labelled nodes, sorted by ``bitmask`` (host numpy).

    Every DAG is a subgraph of the strict upper triangle under some node ordering: the union over
    the d! orderings of the 2^(d(d-1)/2) subsets, made unique.
    """
    if not 1 <= d <= MAX_ENUM_D:
        raise ValueError(f"enumerating DAGs needs 1 <= d <= {MAX_ENUM_D}, got d={d} "
                         f"({NUM_DAGS[6]} DAGs at d=6)")
    import itertools
    iu, ju = np.triu_indices(d, 1)
    m = len(iu)
    sub = (np.arange(1 << m)[:, None] >> np.arange(m)[None, :]) & 1  # [2^m, m]
    codes = []
    for perm in itertools.permutations(range(d)):
        p = np.asarray(perm)
        bits = (p[iu] * d + p[ju]).astype(np.int64)  # edge perm[a] -> perm[b], a < b
        codes.append(np.sum(sub.astype(np.int64) << bits[None, :], axis=1))
    codes = np.unique(np.concatenate(codes))
    adj = ((codes[:, None] >> np.arange(d * d)[None, :]) & 1).reshape(-1, d, d).astype(bool)
    adj.flags.writeable = False  # cached: shared by every caller
    return adj


def _bge_logdet(R: jax.Array, m: jax.Array) -> jax.Array:
    """log det R[m, m] of a bool[d] set m: R with the rows and columns outside m replaced by the
    identity, as the sum of the log pivots of its symmetric Gaussian elimination (the squared
    Cholesky diagonal), in plain jnp: ``jnp.linalg.cholesky``'s LAPACK call inside the vmapped
    rollout hung the XLA:CPU runtime here (idle process, nondeterministically, d = 16-20)."""
    d = R.shape[-1]
    A = jnp.where(m[:, None] & m[None, :], R, jnp.eye(d, dtype=R.dtype))
    idx = jnp.arange(d)

    def body(k, carry):
        A, acc = carry
        piv = A[k, k]
        col = jnp.where(idx > k, A[:, k], 0.0)
        return A - jnp.outer(col, col) / piv, acc + jnp.log(piv)

    return jax.lax.fori_loop(0, d, body, (A, jnp.zeros((), R.dtype)))[1]


def bge_node_score(p: dict, pa: jax.Array, j) -> jax.Array:
    """float[]: the BGe local score of node j with parent set pa bool[d] (pa[j] False), minus
    ``offset[j]``: two masked log-determinants (the per-node term of ``bge_local_scores``)."""
    d = pa.shape[-1]
    R = p["R"]
    lf = jnp.sum(pa).astype(R.dtype)
    fam = pa | (jnp.arange(d) == j)
    return (p["const"][jnp.sum(pa)] + 0.5 * (p["a"] + lf) * _bge_logdet(R, pa)
            - 0.5 * (p["a"] + lf + 1) * _bge_logdet(R, fam) - p["offset"][j])


def bge_local_scores(p: dict, adj: jax.Array) -> jax.Array:
    """float[d]: BGe local score of every node of one adjacency bool[d, d], minus ``offset``:

        const[l_j] + (a + l_j)/2 log det R[pa_j, pa_j] - (a + l_j + 1)/2 log det R[fam_j, fam_j]
        - offset[j],   l_j = |pa_j|, fam_j = pa_j + {j},

    with p = {"R": [d, d], "a": [], "const": [d], "offset": [d]}; each log-determinant by a
    Cholesky factor of R with the rows and columns outside the set replaced by the identity."""
    d = adj.shape[-1]
    eye = jnp.eye(d, dtype=bool)
    pa = adj.T  # pa[j, i]: i -> j
    R = p["R"]

    l = jnp.sum(pa, axis=1)
    lf = l.astype(R.dtype)
    ld_pa = jax.vmap(lambda m: _bge_logdet(R, m))(pa)
    ld_fam = jax.vmap(lambda m: _bge_logdet(R, m))(pa | eye)
    return (p["const"][l] + 0.5 * (p["a"] + lf) * ld_pa - 0.5 * (p["a"] + lf + 1) * ld_fam
            - p["offset"])


@dataclasses.dataclass(frozen=True)
class DAGEnv(Environment):
    """DAGEnv(d, local): DAGs over d nodes, log R(G) = sum_j local[j][code_j(G)].

    ``local``: the local-score table as a tuple of d tuples of 2^(d-1) floats (hashable, so the
    environment can be a static jit argument), or None for a zero table (uniform reward).
    Features: adj (d*d), the legal-edge mask (d*d) and done, float32[2 d^2 + 1].
    """

    d: int = 3
    local: Optional[tuple] = None
    bge: Optional[tuple] = None  # (R [d][d], a, const [d], offset [d]) instead of a table
    max_edges: Optional[int] = None  # at most this many edges (None: d(d-1)/2, every DAG)

    def __post_init__(self):
        if self.local is not None and self.bge is not None:
            raise ValueError("DAGEnv: give a local-score table or BGe statistics, not both")
        if int(self.d) < 2:
            raise ValueError(f"DAGEnv: d must be >= 2, got {self.d}")
        if self.max_edges is not None and not 1 <= int(self.max_edges) <= self.d * (self.d - 1) // 2:
            raise ValueError(f"DAGEnv: max_edges must be in [1, d(d-1)/2 = "
                             f"{self.d * (self.d - 1) // 2}], got {self.max_edges}")
        if self.local is not None:
            t = np.asarray(self.local, np.float64)
            if t.shape != (self.d, 1 << (self.d - 1)):
                raise ValueError(f"DAGEnv: local must be a [d, 2^(d-1)] = [{self.d}, "
                                 f"{1 << (self.d - 1)}] table, got shape {t.shape}")
            if not np.all(np.isfinite(t)):
                raise ValueError("DAGEnv: local scores must be finite")

    # sizes
    @property
    def n_actions(self) -> int:
        return self.d * self.d + 1

    @property
    def n_bwd_actions(self) -> int:
        return self.d * self.d + 1

    @property
    def max_steps(self) -> int:
        m = self.d * (self.d - 1) // 2
        return (m if self.max_edges is None else min(m, int(self.max_edges))) + 1

    @property
    def feature_dim(self) -> int:
        return 2 * self.d * self.d + 1

    # dynamics
    def init(self, cond=None) -> DAGState:
        d = self.d
        return DAGState(jnp.zeros((d, d), bool), jnp.eye(d, dtype=bool), jnp.asarray(False))

    def edge_mask(self, s: DAGState) -> jax.Array:
        """bool[d, d]: the edges that may be added (absent, no cycle), all False when done (and,
        with ``max_edges``, once the graph has that many edges)."""
        ok = ~(s.adj | s.closure.T) & ~s.done
        if self.max_edges is not None:
            ok = ok & (jnp.sum(s.adj) < int(self.max_edges))
        return ok

    def forward_mask(self, s: DAGState) -> jax.Array:
        return jnp.concatenate([self.edge_mask(s).reshape(-1), (~s.done)[None]])

    def backward_mask(self, s: DAGState) -> jax.Array:
        return jnp.concatenate([(s.adj & ~s.done).reshape(-1), s.done[None]])

    def step(self, s: DAGState, action) -> DAGState:
        d = self.d
        a = jnp.asarray(action, jnp.int32)
        stop = a == d * d
        e = jnp.clip(a, 0, d * d - 1)
        i, j = e // d, e % d
        ok = ~stop & ~s.done & self.edge_mask(s)[i, j]
        hit = (jnp.arange(d)[:, None] == i) & (jnp.arange(d)[None, :] == j)
        adj = jnp.where(ok, s.adj | hit, s.adj)
        closure = jnp.where(ok, s.closure | (s.closure[:, i][:, None] & s.closure[j, :][None, :]),
                            s.closure)
        return DAGState(adj, closure, s.done | stop)

    def backward_step(self, s: DAGState, bwd_action) -> DAGState:
        d = self.d
        b = jnp.asarray(bwd_action, jnp.int32)
        unstop = b == d * d
        e = jnp.clip(b, 0, d * d - 1)
        hit = (jnp.arange(d * d) == e).reshape(d, d)
        ok = ~unstop & ~s.done & jnp.any(hit & s.adj)
        adj = jnp.where(ok, s.adj & ~hit, s.adj)
        closure = jnp.where(ok, closure_of(adj), s.closure)
        return DAGState(adj, closure, s.done & ~unstop)

    def backward_action(self, s, action):
        return jnp.asarray(action, jnp.int32)

    def forward_action(self, s, bwd_action):
        return jnp.asarray(bwd_action, jnp.int32)

    def is_terminal(self, s: DAGState) -> jax.Array:
        return s.done

    def is_initial(self, s: DAGState) -> jax.Array:
        return ~jnp.any(s.adj) & ~s.done

    def features(self, s: DAGState) -> jax.Array:
        return jnp.concatenate([s.adj.reshape(-1).astype(jnp.float32),
                                self.edge_mask(s).reshape(-1).astype(jnp.float32),
                                s.done[None].astype(jnp.float32)])

    def terminal_value(self, s: DAGState) -> jax.Array:
        """int32[d, d]: the adjacency matrix."""
        return s.adj.astype(jnp.int32)

    # reward (not part of the dynamics)
    def local_table(self) -> np.ndarray:
        """float64[d, 2^(d-1)]: the local scores (zeros when ``local`` is None)."""
        if self.local is None:
            return np.zeros((self.d, 1 << (self.d - 1)))
        return np.asarray(self.local, np.float64)

    def default_params(self) -> dict:
        """{"local": float32[d, 2^(d-1)]}: the local-score table; with ``bge``, {"R": [d, d],
        "a": [], "const": [d], "offset": [d]} (float32)."""
        if self.bge is not None:
            R, a, const, offset = self.bge
            return {"R": jnp.asarray(R, jnp.float32), "a": jnp.asarray(a, jnp.float32),
                    "const": jnp.asarray(const, jnp.float32),
                    "offset": jnp.asarray(offset, jnp.float32)}
        return {"local": jnp.asarray(self.local_table(), jnp.float32)}

    def local_scores(self, params, adj: jax.Array) -> jax.Array:
        """float[d]: each node's local score in graph ``adj`` (table lookup, or BGe per graph)."""
        p = self.default_params() if params is None else params
        if "local" in p:
            return p["local"][jnp.arange(self.d), parent_codes(adj)]
        return bge_local_scores(p, adj)

    def log_reward(self, params, cond, s: DAGState) -> jax.Array:
        """log R(G) = sum_j local[j, code_j(G)] (``params`` None: the environment's table)."""
        return jnp.sum(self.local_scores(params, s.adj))

    def delta_log_reward(self, params, s: DAGState, i, j) -> jax.Array:
        """log R(G + i->j) - log R(G) = local[j, code_j + 2^(i - [i > j])] - local[j, code_j]:
        the delta score of DAG-GFlowNet's modified detailed balance (edge assumed absent): only
        node j's term changes."""
        hit = (jnp.arange(self.d)[:, None] == i) & (jnp.arange(self.d)[None, :] == j)
        p = self.default_params() if params is None else params
        if "local" not in p:  # BGe per graph: node j's two terms only (4 Cholesky factors)
            pa = s.adj[:, j]
            return bge_node_score(p, pa | hit[:, j], j) - bge_node_score(p, pa, j)
        return (self.local_scores(params, s.adj | hit)[j] - self.local_scores(params, s.adj)[j])

    # enumeration (d <= 5)
    def dag_table(self) -> np.ndarray:
        """int32[G]: the sorted bitmasks of every DAG (``enumerate_dags``)."""
        return bitmask(enumerate_dags(self.d)).astype(np.int32)

    def num_dags(self) -> int:
        if self.d > MAX_ENUM_D:
            raise ValueError(f"DAGEnv: enumeration needs d <= {MAX_ENUM_D}, got d={self.d}")
        return NUM_DAGS[self.d]

    def num_states(self, cond=None) -> int:
        return 2 * self.num_dags()

    def all_states(self, cond=None) -> DAGState:
        adj = enumerate_dags(self.d)
        G = adj.shape[0]
        closure = jax.vmap(closure_of)(jnp.asarray(adj))
        return DAGState(jnp.concatenate([jnp.asarray(adj)] * 2), jnp.concatenate([closure] * 2),
                        jnp.concatenate([jnp.zeros(G, bool), jnp.ones(G, bool)]))

    def state_index(self, s: DAGState, cond=None) -> jax.Array:
        table = jnp.asarray(self.dag_table())
        d = self.d
        code = jnp.sum(s.adj.reshape(-1).astype(jnp.int32) << jnp.arange(d * d, dtype=jnp.int32))
        k = jnp.clip(jnp.searchsorted(table, code), 0, table.shape[0] - 1)
        return (k + s.done * table.shape[0]).astype(jnp.int32)

    def terminal_indices(self):
        G = self.num_dags()
        return jnp.arange(G, 2 * G)
