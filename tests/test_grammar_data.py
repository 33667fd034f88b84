"""Corpora, span F1, .npz grammar files and tree conversion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.grammar import metrics as M
from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar import tree as T


def test_f1_hand_made():
    # n = 5, gold ((0 1) ((2 3) 4)): nontrivial gold {[0,1], [2,4], [2,3]}
    gold = [[[0, 4], [0, 1], [2, 4], [2, 3]]]
    right = [M.right_branching(5)]  # [0,4] [1,4] [2,4] [3,4] -> nontrivial {[1,4],[2,4],[3,4]}
    f = M.span_f1(right, gold, [5])
    assert f["sentence_f1"] == pytest.approx(1 / 3) and f["corpus_f1"] == pytest.approx(1 / 3)
    assert M.span_f1(gold, gold, [5]) == {"sentence_f1": 1.0, "corpus_f1": 1.0}
    # two sentences: pooled counts differ from the mean of the per-sentence F1s
    pred = [[[0, 1]], [[0, 2], [0, 1]]]
    gold2 = [[[0, 1], [2, 3]], [[0, 1], [0, 2]]]  # lengths 4 and 4
    f = M.span_f1(pred, gold2, [4, 4])
    s1 = 2 * 1 * 0.5 / 1.5
    assert f["sentence_f1"] == pytest.approx((s1 + 1.0) / 2)
    assert f["corpus_f1"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    # length-2 sentences have no nontrivial spans and count as F1 = 1 (Kim et al.)
    assert M.span_f1([[[0, 1]]], [[[0, 1]]], [2])["sentence_f1"] == 1.0
    assert M.nll_per_token([-3.0, -5.0], [2, 2]) == pytest.approx(2.0)


def test_tree_round_trip_and_errors():
    t = T.tree_from_spans([[0, 4], [0, 1], [2, 4], [2, 3]], [1, 0, 2, 0], 5, 6)
    spans, labels = T.tree_spans(t)
    assert sorted(map(tuple, spans)) == [(0, 1), (0, 4), (2, 3), (2, 4)]
    order = [(int(a), int(b), int(c)) for a, b, c in zip(t.left[:4], t.split[:4], t.right[:4])]
    assert sorted(order) == [(0, 1, 2), (0, 2, 5), (2, 3, 4), (2, 4, 5)]
    with pytest.raises(ValueError, match="binary tree"):
        T.tree_from_spans([[0, 4], [0, 2], [2, 4], [1, 2]], None, 5, 6)
    with pytest.raises(ValueError, match="needs 4 distinct spans"):
        T.tree_from_spans([[0, 4]], None, 5, 6)
    # bottom-up builder
    tr = T.empty_tree(6, 3)
    tr = T.merge(tr, 0, 1, 2, 3, 1)
    tr = T.merge(tr, 1, 0, 1, 3, 0)
    g = G.random_grammar(jax.random.PRNGKey(0), 2, 2, 4)
    w = jnp.array([0, 1, 2, 0, 0, 0])
    ref = T.tree_from_spans([[0, 2], [1, 2]], [0, 1], 3, 6)
    lj = jax.jit(G.log_joint)
    assert float(lj(g, w, tr)) == pytest.approx(float(lj(g, w, ref)), abs=1e-6)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_text_corpus_with_gold(tmp_path):
    txt = _write(tmp_path, "a.txt", "the cat sat .\nx\nthe dog sat on the mat .\n\na b c d e f g h i j k\n")
    trees = _write(tmp_path, "a.trees", "(S (NP (DT the) (NN cat)) (VP sat) (. .))\n(X x)\n"
                   "(S (NP the dog) (VP sat (PP on (NP the mat))) .)\n(S a b c d e f g h i j k)\n")
    c = C.load(txt, trees, max_len=8, vocab_size=4)
    assert c.stats["sentences_read"] == 4 and c.stats["sentences_kept"] == 2
    assert c.stats["dropped_too_short"] == 1 and c.stats["dropped_too_long"] == 1
    assert c.vocab == ["<unk>", "the", "sat", "."]
    assert c.words.shape == (2, 8) and list(c.lengths) == [4, 7]
    assert c.stats["unk_tokens"] == 4 and c.stats["word_types_dropped"] == 4
    assert [0, 1] in c.gold[0] and [2, 5] in c.gold[1] and [4, 5] in c.gold[1]
    v = C.load(txt, None, max_len=8, vocab=c.vocab)
    assert v.gold is None and v.vocab == c.vocab


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        C.load(_write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(ValueError, match="cannot be read"):
        C.load(str(tmp_path / "missing.txt"))
    txt = _write(tmp_path, "b.txt", "a b c\nd e\n")
    with pytest.raises(ValueError, match="has 1 trees but corpus"):
        C.load(txt, _write(tmp_path, "b1.trees", "(S a b c)\n"))
    with pytest.raises(ValueError, match="line 2: its 3 leaves do not match the 2 words"):
        C.load(txt, _write(tmp_path, "b2.trees", "(S a b c)\n(S d e f)\n"))
    with pytest.raises(ValueError, match="line 1: unbalanced"):
        C.load(txt, _write(tmp_path, "b3.trees", "(S a b c\n(S d e)\n"))
    with pytest.raises(ValueError, match="no sentence has 2..2 words"):
        C.load(_write(tmp_path, "c.txt", "a b c\n"), max_len=2)
    with pytest.raises(ValueError, match="corpus line 1: the word 'zz' is not in the vocabulary"):
        C.encode([["a", "zz"]], ["<unk>", "a"], 4, unknown="error")
    with pytest.raises(ValueError, match=r"u.txt' line 4: the word 'zz' is not in the voc"):
        C.load(_write(tmp_path, "u.txt", "a b\n\nb\na zz\n"), vocab=["a", "b"], unknown="error")


def _probs(nt=2, pt=3, v=4):
    g = G.random_grammar(jax.random.PRNGKey(1), nt, pt, v)
    return {k: np.exp(np.asarray(g[k], np.float64)) for k in g}, [f"w{i}" for i in range(v)]


def test_npz_round_trip(tmp_path):
    p, vocab = _probs()
    g = {k: jnp.log(jnp.asarray(a)) for k, a in p.items()}
    path = str(tmp_path / "g.npz")
    G.save_npz(path, g, vocab)
    g2, v2 = G.load_npz(path)
    assert v2 == vocab
    for k in g:
        np.testing.assert_allclose(np.exp(g2[k]), p[k], atol=1e-6)


@pytest.mark.parametrize("bad, msg", [
    (lambda p: p.update(binary=p["binary"][:, :4]), "binary has shape"),
    (lambda p: p.update(emit=p["emit"] * 1.01), "emit row [0-9]+ sums to 1.01"),
    (lambda p: p["root"].__setitem__(0, np.nan), "root holds NaN"),
    (lambda p: p["binary"].__setitem__((0, 0, 0), -0.1), "binary holds negative"),
    (lambda p: p.pop("emit"), "missing array 'emit'"),
])
def test_npz_validation_errors(tmp_path, bad, msg):
    p, vocab = _probs()
    bad(p)
    path = str(tmp_path / "bad.npz")
    np.savez(path, vocab=np.asarray(vocab), **p)
    with pytest.raises(ValueError, match=msg) as e:
        G.load_npz(path)
    assert "\n" not in str(e.value)


def test_npz_vocab_mismatch_and_unreadable(tmp_path):
    p, vocab = _probs()
    path = str(tmp_path / "v.npz")
    np.savez(path, vocab=np.asarray(vocab[:2]), **p)
    with pytest.raises(ValueError, match="vocab has 2 words but emit has 4"):
        G.load_npz(path)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        G.load_npz(str(junk))


def test_synthetic_corpus_small():
    tr, va, g = C.synthetic(seed=3, n_train=30, n_valid=10, max_len=8, nt=3, pt=4, v=10)
    assert tr.words.shape == (30, 8) and va.words.shape == (10, 8)
    assert np.all((tr.lengths >= 2) & (tr.lengths <= 8))
    for b in range(30):  # gold trees are binary trees over the sentence
        T.tree_from_spans(tr.gold[b], None, int(tr.lengths[b]), 8)
    assert 0 < tr.stats["true_nll_per_token"] < 10
    tr2, _, _ = C.synthetic(seed=3, n_train=30, n_valid=10, max_len=8, nt=3, pt=4, v=10)
    np.testing.assert_array_equal(tr.words, tr2.words)
