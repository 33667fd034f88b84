"""The posterior checks of GFlowNet grammar runs (grammar/posterior.py) against brute force:
state counts against the enumeration, the bracketing marginal against a sum over every labelling,
bracketing probabilities summing to p(x) (inside), and the TV estimator's floor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.grammar import inside
from gfnem_jax.grammar import posterior as POST
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar import tree as T
from gfnem_jax.grammar.env import ParseTree, _enumerate


@pytest.mark.parametrize("n,nt", [(2, 1), (3, 2), (4, 2), (4, 3), (5, 2)])
def test_state_count_matches_the_enumeration(n, nt):
    states, _ = _enumerate(ParseTree(n, nt), n)
    assert POST.state_count(n, nt) == len(states.r)


def _grammar(ncfg):
    return G.random_grammar(jax.random.PRNGKey(5), 2, 3, 6, scale=2.0, ncfg=ncfg)


@pytest.mark.parametrize("ncfg", [False, True])
def test_bracket_marginal_is_the_sum_over_labellings_and_sums_to_p_x(ncfg):
    g = _grammar(ncfg)
    n, L = 4, 5
    words = jnp.asarray([1, 4, 0, 2, 0], jnp.int32)
    trees = T.all_trees(n, 2, L)  # 5 bracketings x 2^3 labellings, bracketing-major
    lj = np.asarray(jax.vmap(lambda t: G.log_joint(g, words, t))(trees), np.float64)
    per_b = np.logaddexp.reduce(lj.reshape(5, 8), axis=1)
    got = np.asarray(jax.vmap(lambda t: POST.bracket_log_joint(g, words, t))(trees))
    np.testing.assert_allclose(got.reshape(5, 8), np.repeat(per_b[:, None], 8, 1), atol=1e-4)
    log_px = float(inside.log_marginal(g, words[None], jnp.asarray([n]))[0])
    np.testing.assert_allclose(np.logaddexp.reduce(per_b), log_px, atol=1e-4)
    # node order is free: the same bracketing in reverse slot order
    t0 = jax.tree.map(lambda a: a[0], trees)
    rev = t0._replace(**{k: getattr(t0, k).at[: n - 1].set(getattr(t0, k)[: n - 1][::-1])
                         for k in ("left", "split", "right", "label")})
    np.testing.assert_allclose(POST.bracket_log_joint(g, words, rev), per_b[0], atol=1e-4)


def test_bracket_tv_estimator():
    p = {(1,): np.log(0.5), (2,): np.log(0.3), (3,): np.log(0.2)}
    assert POST.bracket_tv([(1,)] * 5 + [(2,)] * 3 + [(3,)] * 2, p) == pytest.approx(0.0)
    # only (1,) seen: |1 - .5| plus the unseen mass .5, halved
    assert POST.bracket_tv([(1,)] * 4, p) == pytest.approx(0.5)


def test_bracket_metrics_floor_and_a_wrong_sampler():
    """On exact posterior samples the estimate is at its floor; a sampler stuck on the
    right-branching tree scores 1 - p(right-branching | x)."""
    g = _grammar(False)
    L = 6
    words = np.asarray([[1, 4, 0, 2, 3, 0], [2, 2, 5, 1, 0, 0]], np.int32)
    lengths = np.asarray([5, 4], np.int32)
    exact = lambda key, w, n, k: inside.sample(g, key, jnp.repeat(w[None], k, 0),
                                               jnp.repeat(n[None], k, 0))
    m = POST.bracket_metrics(exact, g, words, lengths, jax.random.PRNGKey(0), 400, 10, 8)
    assert m["bracket_sentences"] == 2 and m["bracket_samples"] == 400
    assert m["bracket_tv"] < 0.12 and m["bracket_tv_floor"] < 0.12

    def right(key, w, n, k):
        nodes = [(i, i + 1, int(n)) for i in range(int(n) - 2, -1, -1)]
        t = T.tree_from_spans([[a, c - 1] for a, _, c in nodes], None, int(n), L)
        return jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a)[None], k, 0), t)

    m2 = POST.bracket_metrics(right, g, words, lengths, jax.random.PRNGKey(0), 50, 10, 8)
    want = []
    for i in range(2):
        n = int(lengths[i])
        t = right(None, words[i], n, 1)
        lp = float(POST.bracket_log_joint(g, jnp.asarray(words[i]), jax.tree.map(lambda a: a[0], t)))
        lpx = float(inside.log_marginal(g, jnp.asarray(words[i:i + 1]), jnp.asarray([n]))[0])
        want.append(1 - np.exp(lp - lpx))
    assert m2["bracket_tv"] == pytest.approx(np.mean(want), abs=1e-4)
