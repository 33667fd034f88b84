"""End to end: each training method writes its metrics; parse, export, resume; MH chain correctness."""
import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.experiments import grammar as E
from gfnem_jax.experiments import grammar_baselines as GB
from gfnem_jax.experiments import grammar_cli
from gfnem_jax.models import grammar as G

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


@pytest.mark.slow
def test_parse_export_resume_and_cli(tmp_path, capsys):
    out = str(tmp_path / "run")
    p = argparse.ArgumentParser()
    grammar_cli.add_train_args(p)
    args = p.parse_args(["--out", out, "--quiet"] + sum(([f"--{k.replace('_', '-')}", str(v)]
                                                          for k, v in TINY.items()), []))
    assert grammar_cli.train_main(args) == 0
    # resume to 6 steps: the first rows are kept
    s = E.GrammarSettings(**{**TINY, "steps": 6})
    E.run(s, out, progress=False, resume=True)
    assert [r["step"] for r in _rows(out)] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="differ from the saved run in lr"):
        E.run(s.replace(steps=8, lr=0.5), out, progress=False, resume=True)
    # export, then parse with the file grammar and with the run
    gpath = str(tmp_path / "g.npz")
    p = argparse.ArgumentParser()
    grammar_cli.add_export_args(p)
    assert grammar_cli.export_main(p.parse_args(["--run", out, "--out", gpath])) == 0
    g, vocab = G.load_npz(gpath)
    txt = tmp_path / "s.txt"
    txt.write_text(f"{vocab[1]} {vocab[2]} {vocab[3]}\n{vocab[1]}\n{vocab[2]} {vocab[2]}\n")
    p = argparse.ArgumentParser()
    grammar_cli.add_parse_args(p)
    po = str(tmp_path / "p.jsonl")
    assert grammar_cli.parse_main(p.parse_args(["--grammar", gpath, "--corpus", str(txt), "--out", po])) == 0
    assert "skipped 1" in capsys.readouterr().err
    lines = [json.loads(l) for l in open(po)]
    assert len(lines) == 2 and lines[1]["spans"] == [[0, 1]]
    assert len(lines[0]["spans"]) == 2 and [0, 2] in lines[0]["spans"]
    assert lines[0]["logprob"] < 0
    # the run gives the same log p(x) as its exported file
    po2 = str(tmp_path / "p2.jsonl")
    grammar_cli.parse_main(p.parse_args(["--run", out, "--corpus", str(txt), "--out", po2,
                                         "--decoder", "sample"]))
    lines2 = [json.loads(l) for l in open(po2)]
    assert lines2[0]["logprob"] == pytest.approx(lines[0]["logprob"], abs=1e-4)
    txt.write_text("nosuchword " + vocab[1] + "\n")
    with pytest.raises(ValueError, match="not in the grammar's vocabulary"):
        E.parse(str(txt), po, grammar=gpath)


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
    assert E.grammar_updates(s) == 3
    assert E.grammar_updates(dataclasses.replace(s, steps=11)) == 3
    assert E.grammar_updates(dataclasses.replace(s, steps=12)) == 4
    assert E.grammar_updates(dataclasses.replace(s, method="marginal")) == 10
    # Adam on a constant gradient moves by lr per update; after int(0.5 * 3) = 1 update by lr/10
    tx = E.make_optimizer(s)
    p = jnp.zeros(())
    st = tx.init(p)
    moves = []
    for _ in range(3):
        u, st = tx.update(jnp.ones(()), st, p)
        moves.append(float(-u))
    np.testing.assert_allclose(moves, [0.01, 0.001, 0.001], rtol=1e-4)
    # constant by default, as before the setting existed
    tx, st = E.make_optimizer(dataclasses.replace(s, lr_drop=1.0)), None
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
    trees = G.all_trees(n, 2, N)
    lj = jax.vmap(lambda t: G.log_joint(g, w, t))(trees)
    post = np.asarray(jnp.exp(lj - jax.nn.logsumexp(lj)))

    def key_(t):
        s, a = G.tree_spans(t)
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
