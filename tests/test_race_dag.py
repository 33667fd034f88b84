"""benchmarks/race_dag.py's exact scoring of a peer's exported P_F table over every DAG: against
brute-force enumeration of the trajectories (d = 3) and the library's own dynamic programme
(d = 4)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from race_dag import dag_terminal_distribution  # noqa: E402

from gfnem_jax import metrics  # noqa: E402
from gfnem_jax.envs.dag import DAGEnv, enumerate_dags  # noqa: E402


def _random_pf(adj, rng, leak=0.0):
    """A random P_F on every DAG over its legal edges (absent, acyclic) and stop; ``leak`` of
    each row's mass moved onto the first illegal edge."""
    G, d, _ = adj.shape
    env = DAGEnv(d)
    st = env.all_states()
    mask = np.asarray(jax.vmap(env.forward_mask)(jax.tree.map(lambda x: x[:G], st)))
    pf = np.where(mask, rng.random(mask.shape) + 0.1, 0.0)
    pf /= pf.sum(1, keepdims=True)
    if leak:
        first = np.argmax(~mask[:, :-1], axis=1)
        has = (~mask[:, :-1]).any(1)
        pf[has] *= 1 - leak
        pf[np.flatnonzero(has), first[has]] += leak
    return pf, mask


def test_matches_brute_force_d3():
    adj = enumerate_dags(3)
    pf, mask = _random_pf(adj, np.random.default_rng(0))
    index = {a.tobytes(): k for k, a in enumerate(adj)}
    brute = np.zeros(len(adj))

    def walk(k, p):
        brute[k] += p * pf[k, -1]
        for a in np.flatnonzero(mask[k, :-1]):
            child = adj[k].copy()
            child.flat[a] = True
            walk(index[child.tobytes()], p * pf[k, a])

    walk(index[np.zeros((3, 3), bool).tobytes()], 1.0)
    pt, leak = dag_terminal_distribution(pf, adj)
    assert leak == 0.0
    np.testing.assert_allclose(pt, brute, rtol=1e-12, atol=1e-15)
    assert abs(pt.sum() - 1) < 1e-12


def test_matches_library_dp_d4_and_reports_leak():
    adj = enumerate_dags(4)
    G = len(adj)
    pf, _ = _random_pf(adj, np.random.default_rng(1))
    env = DAGEnv(4)
    table = metrics.transition_table(env)
    logits = jnp.log(jnp.asarray(np.concatenate([pf, np.full_like(pf, 1.0)]), jnp.float32))
    ref = np.asarray(metrics.logits_terminal_distribution(env, table, logits))[G:]
    pt, _ = dag_terminal_distribution(pf, adj)
    np.testing.assert_allclose(pt, ref, atol=2e-6)
    leaky, _ = _random_pf(adj, np.random.default_rng(1), leak=0.25)
    pt, leak = dag_terminal_distribution(leaky, adj)
    assert abs(leak - 0.25) < 1e-12 and pt.sum() < 0.9
