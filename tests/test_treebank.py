"""Treebank readers (grammar/treebank.py): the safe pickle reader refuses anything but lists,
tuples, integers and strings without running it; CoNLL-U gold spans are the projective subtrees;
written corpora read back through corpus.load with the same spans."""
import os
import pickle

import pytest

from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import treebank as TB

CONLLU = """# text = The cat sat , quickly .
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\t_
4\t,\t,\tPUNCT\t,\t_\t5\tpunct\t_\t_
5\tquickly\tquickly\tADV\tRB\t_\t3\tadvmod\t_\t_
6\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# a non-projective arc: 1 -> 3 crosses 2's attachment to 4
1\tA\ta\tX\tX\t_\t0\troot\t_\t_
2-3\tbc\t_\t_\t_\t_\t_\t_\t_\t_
2\tB\tb\tX\tX\t_\t4\tdep\t_\t_
3\tC\tc\tX\tX\t_\t1\tdep\t_\t_
4\tD\td\tX\tX\t_\t1\tdep\t_\t_

"""


class Boom:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_safe_pickle_reads_span_lists_and_refuses_code(tmp_path):
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps([[(0, 1), (1, 1)], [(0, 2)], ["a", 3]]))
    assert TB.read_safe_pickle(str(ok)) == [[(0, 1), (1, 1)], [(0, 2)], ["a", 3]]
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps([Boom()]))
    with pytest.raises(ValueError, match="only lists, tuples, integers and strings"):
        TB.read_safe_pickle(str(bad))
    other = tmp_path / "set.pkl"
    other.write_bytes(pickle.dumps([{1.5}]))
    with pytest.raises(ValueError, match="bad.pkl|set.pkl"):
        TB.read_safe_pickle(str(other))
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(ok.read_bytes()[:7])
    with pytest.raises(ValueError, match="trunc.pkl"):
        TB.read_safe_pickle(str(trunc))


def test_conllu_projective_subtrees_without_punctuation(tmp_path):
    p = tmp_path / "x.conllu"
    p.write_text(CONLLU)
    sents, gold = TB.read_conllu(str(p))
    assert sents[0] == ["the", "cat", "sat", "quickly"]
    assert sorted(map(tuple, gold[0])) == [(0, 0), (0, 1), (0, 3), (3, 3)]
    assert sents[1] == ["a", "b", "c", "d"]
    # 4 dominates {2, 4}: not contiguous, so no span; 1 dominates all
    assert (1, 3) not in map(tuple, gold[1]) and [0, 3] in gold[1]


def test_written_corpus_reads_back_with_its_spans(tmp_path):
    sents = [["a", "b", "c", "d"], ["x", "y"], ["solo"]]
    gold = [[[0, 1], [2, 3], [0, 3]], [[0, 1]], [[0, 0]]]
    n = TB.write(sents, gold, str(tmp_path / "t.txt"), str(tmp_path / "t.gold"))
    assert n == 2  # one-word sentences are dropped
    c = C.load(str(tmp_path / "t.txt"), str(tmp_path / "t.gold"), max_len=10)
    got = [sorted(map(tuple, s)) for s in c.gold]
    assert set(got[0]) == {(0, 1), (2, 3), (0, 3)}
    s2, g2 = TB.read_bracketed(str(tmp_path / "t.gold"))
    assert s2 == sents[:2]


def test_bad_conllu_is_one_line(tmp_path):
    p = tmp_path / "bad.conllu"
    p.write_text("1\tA\tonly three\n")
    with pytest.raises(ValueError, match="bad.conllu.*line 1"):
        TB.read_conllu(str(p))


def test_benchmark_scores_branching_on_the_sentences_the_runs_evaluate(tmp_path):
    """benchmarks/treebank.py's right/left-branching rows use the first --eval-size test
    sentences, as ``gfnem train grammar --eval-size`` does (not the whole test file), and a UD
    folder's corpus is named from its files."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    import treebank as bench
    from gfnem_jax.grammar import metrics as M

    # gold right-branching for the first two sentences, left-branching for the third
    sents = [["a", "b", "c"], ["d", "e", "f", "g"], ["h", "i", "j"]]
    gold = [M.right_branching(3), M.right_branching(4), M.left_branching(3)]
    txt, gl = tmp_path / "t.txt", tmp_path / "t.gold"
    txt.write_text("".join(" ".join(s) + "\n" for s in sents))
    gl.write_text("".join(TB.bracketed(s, g) + "\n" for s, g in zip(sents, gold)))
    assert bench.branching(str(txt), str(gl), 2)["right-branching"]["corpus_f1"] == 1.0
    assert bench.branching(str(txt), str(gl), 0)["right-branching"]["corpus_f1"] < 1.0
    for s in ("train", "dev", "test"):
        (tmp_path / f"en_gum-ud-{s}.conllu").write_text(CONLLU)
    name, f = bench.ud_files(str(tmp_path))
    assert name == "gum" and f("dev").endswith("en_gum-ud-dev.conllu")
