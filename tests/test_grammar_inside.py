"""Exactness of the grammar code: log p(x, z), inside, expected counts, sampling, Viterbi (n <= 6)."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.grammar import inside
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar import tree as T

NT, PT, V, N = 2, 3, 5, 6

# jitted once per shape (eager dispatch of the scan is slow)
log_marginal = jax.jit(inside.log_marginal)
viterbi = jax.jit(inside.viterbi)
expected_counts = jax.jit(inside.expected_counts)
log_joint = jax.jit(G.log_joint)


def _setup(n, seed=0, dtype=None):
    g = G.random_grammar(jax.random.PRNGKey(seed), NT, PT, V, scale=1.5)
    w = jax.random.randint(jax.random.PRNGKey(100 + n), (N,), 0, V)
    return g, w


def _tree_logp_full(g, words, nodes, labels, pts):
    """log p(x, z, preterminals) with everything explicit (pure Python)."""
    root, binary, emit = (np.asarray(g[k], np.float64) for k in ("root", "binary", "emit"))
    lab = {(i, j): a for (i, k, j), a in zip(nodes, labels)}
    n = len(pts)
    total = root[lab[(0, n)]]
    for (i, k, j), a in zip(nodes, labels):
        b = lab[(i, k)] if k - i > 1 else NT + pts[i]
        c = lab[(k, j)] if j - k > 1 else NT + pts[k]
        total += binary[a, b, c]
    return total + sum(emit[t, words[p]] for p, t in enumerate(pts))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_log_joint_sums_preterminals_exactly(n, float64):
    g, w = _setup(n)
    words = np.asarray(w)
    for nodes in T.bracketings(0, n)[:3]:
        for labels in itertools.product(range(NT), repeat=n - 1):
            full = [_tree_logp_full(g, words, nodes, labels, pts)
                    for pts in itertools.product(range(PT), repeat=n)]
            want = np.logaddexp.reduce(full)
            tree = T.tree_from_spans([[i, j - 1] for i, _, j in nodes], labels, n, N)
            assert float(log_joint(g, w, tree)) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("n", range(2, N + 1))
def test_catalan_count(n):
    assert len(T.bracketings(0, n)) == math.comb(2 * (n - 1), n - 1) // n
    assert T.all_trees(n, NT, N).length.shape[0] == math.comb(2 * (n - 1), n - 1) // n * NT ** (n - 1)


_enum_lj = jax.jit(lambda g, w, trees: jax.vmap(lambda t: G.log_joint(g, w, t))(trees))


def _enum(g, w, n, nt=NT):
    trees = T.all_trees(n, nt, N)
    return trees, _enum_lj(g, w, trees)


@pytest.mark.parametrize("n", range(2, N + 1))
def test_inside_equals_brute_force_float64(n, float64):
    g, w = _setup(n)
    _, lj = _enum(g, w, n)
    got = log_marginal(g, w[None], jnp.array([n]))[0]
    assert float(got) == pytest.approx(float(jax.nn.logsumexp(lj)), abs=1e-10)


@pytest.mark.parametrize("n", range(2, N + 1))
def test_inside_float32_within_1e4(n):
    g, w = _setup(n, seed=3)
    with jax.enable_x64(True):
        g64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), g)
        _, lj = _enum(g64, w, n)
        want = float(jax.nn.logsumexp(lj))
    got = log_marginal(g, w[None], jnp.array([n]))[0]
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_viterbi_is_brute_force_argmax(n, float64):
    g, w = _setup(n, seed=1)
    trees, lj = _enum(g, w, n)
    tree, score = viterbi(g, w[None], jnp.array([n]))
    one = jax.tree.map(lambda a: a[0], tree)
    assert float(score[0]) == pytest.approx(float(lj.max()), abs=1e-10)
    assert float(log_joint(g, w, one)) == pytest.approx(float(lj.max()), abs=1e-10)
    best = jax.tree.map(lambda a: a[int(jnp.argmax(lj))], trees)
    top2 = np.sort(np.asarray(lj))[-2:]
    if top2[1] - top2[0] > 1e-9:  # unique argmax: the same tree
        assert sorted(map(tuple, T.tree_spans(one)[0])) == sorted(map(tuple, T.tree_spans(best)[0]))


@pytest.mark.parametrize("n", [2, 4, 6])
def test_gradient_is_expected_counts(n, float64):
    """grad log p(x) = E_{z ~ p(z|x)} grad log p(x, z) (the per-z gradient holds each rule's count,
    preterminal rules as their posterior given z)."""
    g, w = _setup(n, seed=2)
    trees, lj = _enum(g, w, n)
    post = jnp.exp(lj - jax.nn.logsumexp(lj))
    per_z = jax.jit(jax.vmap(lambda t: jax.grad(G.log_joint)(g, w, t)))(trees)
    want = jax.tree.map(lambda a: jnp.tensordot(post, a, axes=1), per_z)
    got = expected_counts(g, w[None], jnp.array([n]))
    for k in ("root", "binary", "emit"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-9)
    assert float(jnp.sum(got["root"])) == pytest.approx(1.0)
    assert float(jnp.sum(got["binary"])) == pytest.approx(n - 1)
    assert float(jnp.sum(got["emit"])) == pytest.approx(n)


def _key(tree):
    s, a = T.tree_spans(tree)
    return tuple(sorted(zip(map(tuple, s), a)))


def test_posterior_samples_match_enumeration():
    n = 4
    g, w = _setup(n, seed=4)
    trees, lj = _enum(g, w, n)
    post = np.asarray(jnp.exp(lj - jax.nn.logsumexp(lj)))
    index = {_key(jax.tree.map(lambda a: a[t], trees)): t for t in range(len(post))}
    S = 10_000
    words = jnp.tile(w[None], (S, 1))
    samp = jax.jit(inside.sample)(g, jax.random.PRNGKey(7), words, jnp.full((S,), n))
    samp = jax.device_get(samp)
    counts = np.zeros(len(post))
    for s in range(S):
        counts[index[_key(jax.tree.map(lambda a: a[s], samp))]] += 1
    tv = 0.5 * np.abs(counts / S - post).sum()
    # sampling noise alone: E[TV] ~ sum sqrt(p(1-p)/(2 pi S)) ~ 0.03 for 40 outcomes
    assert tv < 0.05, tv
    # the samples are valid trees with log_joint equal to the enumerated value
    lj_s = _enum_lj(g, w, jax.tree.map(lambda a: a[:50], samp))
    assert np.all(np.isfinite(np.asarray(lj_s)))


def test_padding_changes_nothing():
    g = G.random_grammar(jax.random.PRNGKey(5), 3, 4, 7)
    key = jax.random.PRNGKey(9)
    lengths = jnp.array([2, 5, 3, 8, 6])
    words = jax.random.randint(key, (5, 8), 0, 7)
    words = jnp.where(jnp.arange(8)[None] < lengths[:, None], words, 0)
    grad1 = jax.jit(jax.grad(lambda gg, w, l, b: inside.log_marginal(gg, w, l)[b]), static_argnums=3)
    batch = log_marginal(g, words, lengths)
    gb = grad1(g, words, lengths, 1)
    alone = log_marginal(g, words[1:2, :5], lengths[1:2])
    ga = grad1(g, words[1:2, :5], lengths[1:2], 0)
    assert float(batch[1]) == pytest.approx(float(alone[0]), abs=1e-5)
    for k in g:
        np.testing.assert_allclose(gb[k], ga[k], atol=1e-5)
    # other padding words give the same result too
    words2 = jnp.where(jnp.arange(8)[None] < lengths[:, None], words, 6)
    np.testing.assert_allclose(log_marginal(g, words2, lengths), batch, atol=1e-5)
    for k, v in gb.items():
        assert np.all(np.isfinite(np.asarray(v)))


def _ncfg_logp_full(g, words, nodes, labels, pts):
    """NCFG: log p(x, z, preterminals) with the rule of each node conditioned on its parent's label."""
    root, binary, emit = (np.asarray(g[k], np.float64) for k in ("root", "binary", "emit"))
    lab = {(i, j): a for (i, k, j), a in zip(nodes, labels)}
    parent = {}
    for (i, k, j), a in zip(nodes, labels):
        parent[(i, k)] = a
        parent[(k, j)] = a
    n = len(pts)
    total = root[lab[(0, n)]]
    for (i, k, j), a in zip(nodes, labels):
        b = lab[(i, k)] if k - i > 1 else NT + pts[i]
        c = lab[(k, j)] if j - k > 1 else NT + pts[k]
        total += binary[parent.get((i, j), NT), a, b, c]
    return total + sum(emit[t, words[p]] for p, t in enumerate(pts))


@pytest.mark.parametrize("n", [3, 4])
def test_ncfg_log_joint_exact(n, float64):
    g = G.random_grammar(jax.random.PRNGKey(11), NT, PT, V, scale=1.5, ncfg=True)
    assert g["binary"].shape == (NT + 1, NT, NT + PT, NT + PT)
    w = jax.random.randint(jax.random.PRNGKey(12), (N,), 0, V)
    words = np.asarray(w)
    for nodes in T.bracketings(0, n):
        for labels in itertools.product(range(NT), repeat=n - 1):
            want = np.logaddexp.reduce([_ncfg_logp_full(g, words, nodes, labels, pts)
                                        for pts in itertools.product(range(PT), repeat=n)])
            tree = T.tree_from_spans([[i, j - 1] for i, _, j in nodes], labels, n, N)
            assert float(log_joint(g, w, tree)) == pytest.approx(want, abs=1e-9)
    # an NCFG whose rules ignore the parent is the PCFG
    pc = G.random_grammar(jax.random.PRNGKey(13), NT, PT, V)
    nc = {**pc, "binary": jnp.broadcast_to(pc["binary"], (NT + 1,) + pc["binary"].shape)}
    trees = T.all_trees(n, NT, N)
    a = _enum_lj(pc, w, trees)
    b = _enum_lj(nc, w, trees)
    np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("ncfg", [False, True])
def test_neural_grammar_rules_are_distributions(ncfg):
    from gfnem_jax.grammar.neural import NeuralGrammar
    m = NeuralGrammar(nt=3, pt=4, vocab_size=11, dim=16, ncfg=ncfg)
    g = m.rule_log_probs(m.init(jax.random.PRNGKey(0)))
    assert g["root"].shape == (3,) and g["emit"].shape == (4, 11)
    assert g["binary"].shape == ((4, 3, 7, 7) if ncfg else (3, 7, 7))
    np.testing.assert_allclose(jnp.exp(g["root"]).sum(), 1, atol=1e-5)
    np.testing.assert_allclose(jnp.exp(g["binary"]).sum((-2, -1)), 1, atol=1e-5)
    np.testing.assert_allclose(jnp.exp(g["emit"]).sum(-1), 1, atol=1e-5)


# -- NCFG through parent annotation (exact inside / Viterbi / posterior samples) ---------------
def _ncfg_setup(n, seed):
    g = G.random_grammar(jax.random.PRNGKey(seed), NT + 1, PT, V, scale=1.5, ncfg=True)
    w = jax.random.randint(jax.random.PRNGKey(200 + n), (N,), 0, V)
    return g, jnp.where(jnp.arange(N) < n, w, 0)


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_ncfg_inside_and_viterbi_equal_enumeration(n, float64):
    g, w = _ncfg_setup(n, 21)
    lj = _enum_lj(g, w, T.all_trees(n, NT + 1, N))
    assert float(log_marginal(g, w[None], jnp.array([n]))[0]) == pytest.approx(
        float(jax.nn.logsumexp(lj)), abs=1e-9)
    vt, score = viterbi(g, w[None], jnp.array([n]))
    assert float(score[0]) == pytest.approx(float(jnp.max(lj)), abs=1e-9)
    # the decoded tree carries NCFG labels (not annotated ones) and scores its Viterbi value
    vt1 = jax.tree.map(lambda a: a[0], vt)
    assert int(jnp.max(vt1.label[: n - 1])) < NT + 1
    assert float(log_joint(g, w, vt1)) == pytest.approx(float(score[0]), abs=1e-9)
    # an NCFG whose rules ignore the parent gives the PCFG's inside value
    pc = G.random_grammar(jax.random.PRNGKey(22), NT, PT, V)
    nc = {**pc, "binary": jnp.broadcast_to(pc["binary"], (NT + 1,) + pc["binary"].shape)}
    np.testing.assert_allclose(log_marginal(nc, w[None], jnp.array([n])),
                               log_marginal(pc, w[None], jnp.array([n])), atol=1e-9)


def test_ncfg_posterior_samples_match_enumeration():
    n = 3
    g, w = _ncfg_setup(n, 23)
    trees, lj = _enum(g, w, n, nt=NT + 1)
    post = np.asarray(jnp.exp(lj - jax.nn.logsumexp(lj)))
    index = {_key(jax.tree.map(lambda a: a[t], trees)): t for t in range(len(post))}
    S = 6_000
    samp = jax.device_get(jax.jit(inside.sample)(g, jax.random.PRNGKey(8), jnp.tile(w[None], (S, 1)),
                                                 jnp.full((S,), n)))
    counts = np.zeros(len(post))
    for s in range(S):
        counts[index[_key(jax.tree.map(lambda a: a[s], samp))]] += 1
    tv = 0.5 * np.abs(counts / S - post).sum()
    # 18 labelled trees (the child's rules depend on the root's label): sampling noise alone
    # gives E[TV] < 0.02
    assert tv < 0.04, tv


def test_ncfg_gradient_matches_finite_differences(float64):
    n = 4
    g, w = _ncfg_setup(n, 24)
    f = lambda b: inside.log_marginal({**g, "binary": b}, w[None], jnp.array([n]))[0]
    grad = jax.grad(f)(g["binary"])
    assert np.all(np.isfinite(np.asarray(grad)))
    d = jax.random.normal(jax.random.PRNGKey(25), g["binary"].shape)
    eps = 1e-5
    fd = (f(g["binary"] + eps * d) - f(g["binary"] - eps * d)) / (2 * eps)
    assert float(jnp.sum(grad * d)) == pytest.approx(float(fd), rel=1e-6)


def test_parent_annotate_refuses_large_nt():
    g = G.random_grammar(jax.random.PRNGKey(0), 30, 2, 3, ncfg=True)
    with pytest.raises(ValueError, match="max_annotated"):
        G.parent_annotate(g)


@pytest.mark.parametrize("ncfg", [False, True])
def test_length_probabilities_sum_over_all_sentences(ncfg, float64):
    """log P(n words) = logsumexp over every sentence of n words of log p(x) (enumerated, V = 3)."""
    v, n_max = 3, 4
    g = G.random_grammar(jax.random.PRNGKey(31), NT, PT, v, scale=1.0, ncfg=ncfg)
    lp = inside.length_log_probs(g, n_max)
    assert np.all(np.isneginf(np.asarray(lp[:2])))
    for n in range(2, n_max + 1):
        sents = np.array(list(itertools.product(range(v), repeat=n)), np.int32)
        W = np.zeros((len(sents), n_max), np.int32)
        W[:, :n] = sents
        want = jax.nn.logsumexp(log_marginal(g, jnp.asarray(W), jnp.full((len(sents),), n)))
        assert float(lp[n]) == pytest.approx(float(want), abs=1e-9)
    # a proper grammar's length distribution sums to <= 1, and close to 1 for long enough max_len
    total = float(jnp.exp(jax.nn.logsumexp(inside.length_log_probs(g, 40))))
    assert total <= 1 + 1e-9
