"""End to end: each training method writes its metrics; parse, export, resume; MH chain correctness."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.experiments import grammar as E
from gfnem_jax.grammar import baselines as GB
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar import run as R
from gfnem_jax.grammar import tree as T

TINY = dict(nt=3, pt=4, dim=16, max_len=8, steps=4, batch_size=8, log_every=2, synth_train=40,
            synth_valid=12, synth_nt=3, synth_pt=4, synth_vocab=12, mcmc_steps=3, eval_mcmc_steps=5,
            eval_batch=16)
KEYS = {"step", "nll_per_token", "sentence_f1", "corpus_f1", "wall_s"}


def _rows(out):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.parametrize("method, grammar", [("marginal", "cfg"), ("exact-sampling", "cfg"),
                                             ("mc-em", "cfg"), ("mc-em", "ncfg"),
                                             ("marginal", "ncfg")])
def test_each_method_writes_metrics(tmp_path, method, grammar):
    out = str(tmp_path / "run")
    s = E.GrammarSettings(method=method, grammar=grammar, **TINY)
    summary = E.run(s, out, progress=False)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert KEYS <= set(r)
        assert 0 <= r["sentence_f1"] <= 1 and 0 <= r["corpus_f1"] <= 1
        # exact for the NCFG too: nt=3 is small enough for parent annotation
        assert np.isfinite(r["nll_per_token"]) and r["nll_per_token"] > 0
    assert np.isfinite(rows[-1]["loss"])
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert os.path.isfile(os.path.join(out, "summary.json")) and summary["steps"] == 4
    assert os.path.isdir(os.path.join(out, "checkpoint"))


def _cli(*argv):
    from gfnem_jax import cli
    return cli.main(list(argv))


@pytest.mark.slow
def test_parse_export_and_resume_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "run")
    flags = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()), [])
    _cli("train", "grammar", "--out", out, "--quiet", *flags)
    assert [r["step"] for r in _rows(out)] == [0, 2, 4]
    # resume to 6 steps: the first rows are kept; a changed setting is refused, named as a flag
    more = [f for f in flags]
    more[more.index("--steps") + 1] = "6"
    _cli("train", "grammar", "--out", out, "--quiet", "--resume", *more)
    assert [r["step"] for r in _rows(out)] == [0, 2, 4, 6]
    more[more.index("--steps") + 1] = "8"
    with pytest.raises(SystemExit) as e:
        _cli("train", "grammar", "--out", out, "--quiet", "--resume", "--lr", "0.5", *more)
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err
    # export, then parse with the file grammar and with the run
    gpath = str(tmp_path / "g.npz")
    _cli("export-grammar", "--run", out, "--out", gpath)
    g, vocab = G.load_npz(gpath)
    txt = tmp_path / "s.txt"
    txt.write_text(f"{vocab[1]} {vocab[2]} {vocab[3]}\n{vocab[1]}\n{vocab[2]} {vocab[2]}\n")
    po = str(tmp_path / "p.jsonl")
    _cli("parse", "--grammar", gpath, "--corpus", str(txt), "--out", po)
    assert "skipped 1 of 3 lines (written as null): 1 of one word (line 2)" in capsys.readouterr().err
    lines = [json.loads(l) for l in open(po)]
    assert len(lines) == 3 and lines[1] is None and lines[2]["spans"] == [[0, 1]]
    assert len(lines[0]["spans"]) == 2 and [0, 2] in lines[0]["spans"]
    assert lines[0]["logprob"] < 0
    # the run gives the same log p(x) as its exported file
    po2 = str(tmp_path / "p2.jsonl")
    _cli("parse", "--run", out, "--corpus", str(txt), "--out", po2, "--decoder", "sample")
    lines2 = [json.loads(l) for l in open(po2)]
    assert lines2[0]["logprob"] == pytest.approx(lines[0]["logprob"], abs=1e-4)
    # errors: one line naming the flag, exit 2
    for argv, msg in ((["--run", str(tmp_path), "--decoder", "viterbi"], "--run"),
                      (["--grammar", gpath, "--decoder", "best-of-0"], "decoder must be"),
                      (["--grammar", gpath, "--decoder", "greedy"], "needs a run trained with")):
        with pytest.raises(SystemExit) as e:
            _cli("parse", "--corpus", str(txt), "--out", po, *argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    # unknown words: read as <unk> by the run and by its exported file (whose vocabulary has it)
    txt.write_text("nosuchword " + vocab[1] + "\n")
    for src in (dict(grammar=gpath), dict(run=out)):
        rep = E.parse(str(txt), po, **src)
        assert rep["parsed"] == 1 and rep["unk_tokens"] == 1 and rep["unknown"] == {1: "nosuchword"}


def test_settings_errors():
    # an NCFG trains by exact marginalisation only when small enough for parent annotation
    with pytest.raises(ValueError, match="nt=30 is too many"):
        E.GrammarSettings(grammar="ncfg").validate()
    E.GrammarSettings(grammar="ncfg", nt=5).validate()
    with pytest.raises(ValueError, match="grammar must be cfg, ncfg or an existing"):
        E.GrammarSettings(grammar="nope.npz").validate()
    with pytest.raises(ValueError, match="method must be one of"):
        E.GrammarSettings(method="vi").validate()


def test_lr_drop_counts_the_grammar_updates_of_the_run():
    # fixed schedule, 2 E-steps then 1 M-step: 10 steps = 3 full cycles + 1 E-step -> 3 updates
    s = E.GrammarSettings(method="gflownet", schedule="fixed", e_steps=2, m_steps=1, steps=10,
                          lr=0.01, lr_drop=0.1, lr_drop_at=0.5, grad_clip=0.0)
    assert R.grammar_updates(s) == 3
    assert R.grammar_updates(dataclasses.replace(s, steps=11)) == 3
    assert R.grammar_updates(dataclasses.replace(s, steps=12)) == 4
    assert R.grammar_updates(dataclasses.replace(s, method="marginal")) == 10
    # Adam on a constant gradient moves by lr per update; after int(0.5 * 3) = 1 update by lr/10
    tx = R.make_optimizer(s)
    p = jnp.zeros(())
    st = tx.init(p)
    moves = []
    for _ in range(3):
        u, st = tx.update(jnp.ones(()), st, p)
        moves.append(float(-u))
    np.testing.assert_allclose(moves, [0.01, 0.001, 0.001], rtol=1e-4)
    # constant by default, as before the setting existed
    tx, st = R.make_optimizer(dataclasses.replace(s, lr_drop=1.0)), None
    st = tx.init(p)
    for _ in range(3):
        u, st = tx.update(jnp.ones(()), st, p)
    np.testing.assert_allclose(float(-u), 0.01, rtol=1e-4)
    with pytest.raises(ValueError, match="lr_drop < 1 needs a known number"):
        dataclasses.replace(s, schedule="adaptive").validate()


def test_mh_chain_targets_the_posterior():
    """MC-EM's chain: long chains from near-uniform trees match p(z | x) by enumeration (n = 4)."""
    g = G.random_grammar(jax.random.PRNGKey(4), 2, 3, 5, scale=1.5)
    n, N, B = 4, 6, 3000
    w = jax.random.randint(jax.random.PRNGKey(104), (N,), 0, 5)
    trees = T.all_trees(n, 2, N)
    lj = jax.vmap(lambda t: G.log_joint(g, w, t))(trees)
    post = np.asarray(jnp.exp(lj - jax.nn.logsumexp(lj)))

    def key_(t):
        s, a = T.tree_spans(t)
        return tuple(sorted(zip(map(tuple, s), a)))

    index = {key_(jax.tree.map(lambda a: a[i], trees)): i for i in range(len(post))}
    words = jnp.tile(w[None], (B, 1))
    t0 = GB.random_trees(jax.random.PRNGKey(1), jnp.full((B,), n), N, 2)
    t1, acc = jax.jit(lambda k, ws, t: GB.mh_chain(lambda x, z: G.log_joint(g, x, z), k, ws, t, 150, 2))(
        jax.random.PRNGKey(2), words, t0)
    t1 = jax.device_get(t1)
    c = np.zeros(len(post))
    for b in range(B):
        c[index[key_(jax.tree.map(lambda a: a[b], t1))]] += 1
    assert 0.5 * np.abs(c / B - post).sum() < 0.06
    assert 0 < float(acc) < 1
