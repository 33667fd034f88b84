"""`gfnem parse` (one output line per input line, the unknown-word rule, the stderr notice),
damaged grammar and run files (one line naming the file), and `gfnem eval grammar` (the held-out
row of the run's own last logged evaluation, recomputed from its checkpoint)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import cli
from gfnem_jax.experiments import grammar as E
from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import inside
from gfnem_jax.grammar import rules as G

TINY = dict(nt=3, pt=4, dim=16, max_len=8, steps=4, batch_size=8, log_every=2, synth_train=40,
            synth_valid=12, synth_nt=3, synth_pt=4, synth_vocab=12, mcmc_steps=3, eval_mcmc_steps=5,
            eval_batch=16)


def _grammar(path, vocab):
    g = G.random_grammar(jax.random.PRNGKey(3), 2, 3, len(vocab), scale=1.0)
    G.save_npz(str(path), g, vocab)
    return G.load_npz(str(path))[0]


def _fail(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if not l.startswith("WARNING")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("unk", [True, False])
def test_parse_writes_one_line_per_input_line(tmp_path, capsys, unk):
    vocab = (["<unk>"] if unk else []) + ["the", "dog", "barks", "a", "cat"]
    g = _grammar(tmp_path / "g.npz", vocab)
    text = ["the dog barks", "", "dog", "the zebra barks", "a cat " * 4, "   ", "a cat", "cat dog"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(text) + "\n")
    out = tmp_path / "p.jsonl"
    for decoder in ("viterbi", "sample"):
        cli.main(["parse", "--grammar", str(tmp_path / "g.npz"), "--corpus", str(corpus),
                  "--out", str(out), "--max-len", "6", "--decoder", decoder])
        err = capsys.readouterr().err
        rows = [json.loads(l) for l in open(out)]
        assert len(rows) == len(text)  # output line i is input line i
        parsed = [0, 6, 7] + ([3] if unk else [])
        assert [i for i, r in enumerate(rows) if r is not None] == sorted(parsed)
        # logprob is log p(x) by inside, whatever the decoder
        for i in parsed:
            words, lengths, _ = C.encode([text[i].split()], vocab, 6)
            lp = float(inside.log_marginal(g, jnp.asarray(words), jnp.asarray(lengths))[0])
            assert rows[i]["logprob"] == pytest.approx(lp, abs=1e-4)
            n = len(text[i].split())  # n - 1 inclusive spans, the whole sentence among them
            sp = rows[i]["spans"]
            assert len(sp) == n - 1 and [0, n - 1] in sp
            assert all(0 <= a < b <= n - 1 for a, b in sp)
        assert sorted(map(tuple, rows[0]["spans"])) in ([(0, 1), (0, 2)], [(0, 2), (1, 2)])
        assert rows[6]["spans"] == [[0, 1]]
        # stderr: every reason with its line numbers (1-based)
        skipped = 5 - (1 if unk else 0)
        assert f"skipped {skipped} of 8 lines (written as null)" in err, err
        assert "2 empty (lines 2, 6)" in err and "1 of one word (line 3)" in err
        assert "1 longer than max_len = 6 words (line 5)" in err
        if unk:
            assert "read 1 unknown word as <unk> in 1 sentence (line 4; first: 'zebra')" in err
        else:
            assert "1 with a word not in the grammar's vocabulary, which has no <unk> (line 4; " \
                   "first: 'zebra')" in err
        assert f"parsed {len(parsed)} of 8 lines" in err


def test_damaged_grammar_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "g.npz"
    _grammar(path, ["<unk>", "a", "b"])
    data = path.read_bytes()
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    bad = tmp_path / "bad.npz"
    flipped = bytearray(data)
    flipped[len(data) // 3: len(data) // 3 + 64] = os.urandom(64)
    for damaged in (data[: len(data) // 2], data[:20], bytes(flipped)):
        bad.write_bytes(damaged)
        with pytest.raises(ValueError, match="bad.npz' is not a readable .npz file") as e:
            G.load_npz(str(bad))
        assert "\n" not in str(e.value)
        line = _fail(["parse", "--grammar", str(bad), "--corpus", str(corpus), "--out",
                      str(tmp_path / "p.jsonl")], capsys)
        assert "--grammar" in line and "bad.npz" in line and "not a readable .npz" in line
        line = _fail(["train", "grammar", "--grammar", str(bad), "--corpus", str(corpus),
                      "--steps", "2", "--out", str(tmp_path / "run")], capsys)
        assert "bad.npz" in line and "not a readable .npz" in line
    assert not os.path.exists(tmp_path / "p.jsonl") and not os.path.exists(tmp_path / "run")


def _fake_run(tmp_path, method="marginal"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(E.GrammarSettings(method=method, **TINY).to_dict()))
    (run / "vocab.json").write_text(json.dumps(["<unk>", "a", "b"]))
    (run / "data.json").write_text(json.dumps({"n_train": 40}))
    return run


@pytest.mark.parametrize("name, content", [
    ("config.json", ""), ("config.json", '{"nt": 3, "pt'), ("config.json", "[1, 2]"),
    ("vocab.json", ""), ("vocab.json", '["<unk>", "a'), ("vocab.json", '{"a": 1}'),
    ("vocab.json", None), ("data.json", "\x00\x01"), ("data.json", '{"n": 3}'),
])
def test_damaged_run_files_are_one_line_naming_the_file(tmp_path, capsys, name, content):
    run = _fake_run(tmp_path, method="mc-em")
    if content is None:
        os.remove(run / name)
    else:
        (run / name).write_text(content)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    for argv in (["parse", "--run", str(run), "--corpus", str(corpus), "--out",
                  str(tmp_path / "p.jsonl")],
                 ["export-grammar", "--run", str(run), "--out", str(tmp_path / "g.npz")],
                 ["eval", "grammar", "--run", str(run)]):
        line = _fail(argv, capsys)
        assert name in line and "--run" in line, line
        assert "Expecting value" not in line or name in line
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "run"]


def test_output_in_a_missing_directory_is_refused_before_work(tmp_path, capsys):
    _grammar(tmp_path / "g.npz", ["<unk>", "a", "b"])
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    line = _fail(["parse", "--grammar", str(tmp_path / "g.npz"), "--corpus", str(corpus), "--out",
                  str(tmp_path / "nodir" / "p.jsonl")], capsys)
    assert "does not exist" in line
    run = _fake_run(tmp_path)  # no checkpoint: refused for the output before the run is read
    line = _fail(["export-grammar", "--run", str(run), "--out", str(tmp_path / "nodir" / "g.npz")],
                 capsys)
    assert "does not exist" in line and not os.path.exists(tmp_path / "nodir")


def _bracketed(words, spans):
    """A Penn-style tree of inclusive spans (one node per span, leaves the words)."""
    def rec(i, j):
        if i == j:
            return words[i]
        k = max((b for a, b in spans if a == i and b < j), default=None)
        k = k if k is not None else i
        return f"(X {rec(i, k)} {rec(k + 1, j)})"
    return rec(0, len(words) - 1)


def test_eval_grammar_recomputes_the_last_logged_row(tmp_path, capsys):
    run = tmp_path / "run"
    flags = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()), [])
    cli.main(["train", "grammar", "--out", str(run), "--quiet", *flags])
    capsys.readouterr()
    last = [json.loads(l) for l in open(run / "metrics.jsonl")][-1]
    cli.main(["eval", "grammar", "--run", str(run)])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.load(open(run / "eval.json")) == res
    assert res["step"] == last["step"] == 4 and res["sentences"] == 12
    keys = set(last) - {"step", "loss", "wall_s"}
    assert keys and keys <= set(res)
    for k in keys:  # the same numbers on the same data
        assert res[k] == pytest.approx(last[k], rel=1e-6, abs=1e-9), k
    # the validation set given as files: the same numbers again
    _, va, _ = C.synthetic(0, TINY["synth_train"], TINY["synth_valid"], TINY["max_len"],
                           TINY["synth_nt"], TINY["synth_pt"], TINY["synth_vocab"])
    (tmp_path / "v.txt").write_text("\n".join(" ".join(t) for t in va.tokens) + "\n")
    (tmp_path / "v.trees").write_text("\n".join(_bracketed(t, sp) for t, sp in zip(va.tokens, va.gold)) + "\n")
    cli.main(["eval", "grammar", "--run", str(run), "--corpus", str(tmp_path / "v.txt"),
              "--gold", str(tmp_path / "v.trees")])
    res2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res2["corpus"] == str(tmp_path / "v.txt") and res2["sentences"] == 12
    for k in ("nll_per_token", "sentence_f1", "corpus_f1"):
        assert res2[k] == pytest.approx(last[k], rel=1e-6), k
    line = _fail(["eval", "grammar", "--run", str(run), "--gold", str(tmp_path / "v.trees")], capsys)
    assert "--gold" in line and "--corpus" in line


@pytest.mark.slow
def test_eval_grammar_of_a_gflownet_run_recomputes_its_is_bound(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = dict(TINY, steps=6, log_every=3, max_len=6)
    flags = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in tiny.items()), [])
    cli.main(["train", "grammar", "--method", "gflownet", "--policy-layers", "1", "--policy-dim",
              "32", "--policy-heads", "2", "--policy-enc-layers", "1", "--eval-samples", "2",
              "--schedule", "fixed", "--e-steps", "1", "--out", str(run), "--quiet", *flags])
    capsys.readouterr()
    last = [json.loads(l) for l in open(run / "metrics.jsonl")][-1]
    cli.main(["eval", "grammar", "--run", str(run)])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["step"] == last["step"] == 6 and res["is_samples"] == 2
    for k in ("nll_per_token", "is_nll_per_token", "corpus_f1", "sentence_f1", "gfn_corpus_f1",
              "best_corpus_f1", "greedy_sentence_f1"):
        assert res[k] == pytest.approx(last[k], rel=1e-6), k
