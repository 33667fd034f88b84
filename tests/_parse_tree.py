"""The small parse-tree setting shared by test_parse_tree_policy.py and test_parse_tree_rollout.py:
a 5-word environment with 2 nonterminals, a 1-layer policy, five sentences of lengths 5, 2, 4, 3
and 1, the jitted bucketed rollout and evaluations, and the policy's parameters and trajectories
as module fixtures."""
import jax
import jax.numpy as jnp
import pytest

from gfnem_jax import sampling
from gfnem_jax.grammar import rollout as pb
from gfnem_jax.grammar.env import ParseTree, make_cond
from gfnem_jax.grammar.policy import ParsePolicy

L, NT, V = 5, 2, 11
ENV = ParseTree(L, NT)
POL = ParsePolicy(L, NT, V, dim=32, layers=1, heads=4, enc_layers=1)
SENTS = [[1, 2, 3, 4, 5], [3, 9], [4, 4, 8, 1], [10, 0, 5], [6]]

EVAL = jax.jit(pb.evaluate, static_argnums=(0, 1, 4))
CORE_EVAL = jax.jit(sampling.evaluate, static_argnums=(0, 1))
ROLLOUT = jax.jit(lambda p, k, c: pb.rollout(ENV, POL, p, k, c, n_buckets=2))


def batch(sents):
    """The conditions of ``sents`` stacked into one batch."""
    conds = [make_cond(s, L) for s in sents]
    return jax.tree.map(lambda *a: jnp.stack(a), *conds)


@pytest.fixture(scope="module")
def params():
    c = make_cond(SENTS[0], L)
    return POL.init(jax.random.PRNGKey(0), ENV.observe(ENV.init(c)), c)


@pytest.fixture(scope="module")
def traj(params):
    return ROLLOUT(params, jax.random.PRNGKey(1), batch(SENTS))
