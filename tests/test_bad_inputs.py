"""The bad-input table (docs/bad_inputs.rst): every case is answered with ONE line on stderr naming
the problem, exit status 2, no traceback, and nothing written under --out.

Cases run in this process through ``gfnem_jax.cli.main`` (each fails before any compilation).
``test_the_docs_table_lists_every_case`` keeps docs/bad_inputs.rst in step with CASES.
"""
import os

import numpy as np
import pytest

from gfnem_jax import cli

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "bad_inputs.rst")


def _files(d):
    """Bad input files written into directory d; returns {name: path}."""
    p = {}
    p["missing"] = str(d / "missing.txt")
    p["empty_corpus"] = str(d / "empty.txt")
    open(p["empty_corpus"], "w").close()
    p["corpus"] = str(d / "c.txt")
    open(p["corpus"], "w").write("the dog barks\na cat sleeps here\n")
    p["gold_count"] = str(d / "g1.txt")
    open(p["gold_count"], "w").write("((the dog) barks)\n")
    p["gold_words"] = str(d / "g2.txt")
    open(p["gold_words"], "w").write("((the cat) barks)\n((a cat) (sleeps here))\n")
    p["gold_syntax"] = str(d / "g3.txt")
    open(p["gold_syntax"], "w").write("((the dog barks)\n((a cat) (sleeps here))\n")
    nt, pt, v = 2, 2, 3
    good = {"root": np.full(nt, 1 / nt), "binary": np.full((nt, nt + pt, nt + pt), 1 / (nt + pt) ** 2),
            "emit": np.full((pt, v), 1 / v), "vocab": np.array(["a", "b", "c"])}
    for name, change in (("g_rows", {"root": np.array([0.7, 0.7])}),
                         ("g_nan", {"emit": np.full((pt, v), np.nan)}),
                         ("g_neg", {"root": np.array([1.5, -0.5])}),
                         ("g_shape", {"binary": np.full((nt, 3, 3), 1 / 9)}),
                         ("g_vocab", {"vocab": np.array(["a", "b"])})):
        p[name] = str(d / f"{name}.npz")
        np.savez(p[name], **{**good, **change})
    p["g_ok"] = str(d / "g_ok.npz")
    np.savez(p["g_ok"], **good)
    p["npz_truncated"] = str(d / "trunc.npz")
    data = open(p["g_ok"], "rb").read()
    open(p["npz_truncated"], "wb").write(data[: len(data) // 2])
    for name, fname, text in (("run_badvocab", "vocab.json", ""), ("run_badcfg", "config.json", '{"nt": 3, "pt'),
                              ("run_nockpt", "vocab.json", '["<unk>", "a"]')):
        p[name] = str(d / (name.replace("run_", "") + "run"))
        os.makedirs(p[name])
        open(os.path.join(p[name], "config.json"), "w").write('{"method": "marginal", "grammar": "cfg", "corpus": "synthetic", "nt": 3, "pt": 4}')
        open(os.path.join(p[name], fname), "w").write(text)
    p["not_npz"] = str(d / "bad.npz")
    open(p["not_npz"], "w").write("not a zip")
    p["npy_values"] = str(d / "v.npy")
    np.save(p["npy_values"], np.array([[0, 1, 2], [1, 0, 1]]))
    p["npy_shape"] = str(d / "s.npy")
    np.save(p["npy_shape"], np.zeros((2, 3, 4)))
    p["npz_images"] = str(d / "img.npz")
    np.savez(p["npz_images"], x_train=np.zeros((5, 7)), x_test=np.zeros((2, 7)))
    p["idx_dir"] = str(d / "idx")
    os.makedirs(p["idx_dir"])
    open(os.path.join(p["idx_dir"], "train-images-idx3-ubyte"), "wb").write(b"\x00\x00")
    p["run_nocfg"] = str(d / "emptyrun")
    os.makedirs(p["run_nocfg"])
    p["run_cfg"] = str(d / "cfgrun")
    os.makedirs(p["run_cfg"])
    open(os.path.join(p["run_cfg"], "config.json"), "w").write('{"task": "hypergrid", "env": {"ndim": 2, "height": 8}}')
    p["csv_text"] = str(d / "obs.csv")
    open(p["csv_text"], "w").write("a,b,c\n1,2,3\n4,x,6\n")
    p["npy_cols"] = str(d / "obs4.npy")
    np.save(p["npy_cols"], np.ones((10, 4)))
    p["file"] = str(d / "plainfile")
    open(p["file"], "w").write("x")
    return p


G = ["train", "grammar", "--steps", "2"]
# (what is wrong, argv builder (files, out) -> argv, a word the one line must contain)
CASES = [
    ("grammar: --corpus file missing", lambda f, o: G + ["--corpus", f["missing"], "--out", o], "corpus"),
    ("grammar: empty corpus", lambda f, o: G + ["--corpus", f["empty_corpus"], "--out", o], "corpus"),
    ("grammar: gold trees fewer than sentences", lambda f, o: G + ["--corpus", f["corpus"], "--gold", f["gold_count"], "--out", o], "gold"),
    ("grammar: gold tree leaves differ from the sentence", lambda f, o: G + ["--corpus", f["corpus"], "--gold", f["gold_words"], "--out", o], "gold"),
    ("grammar: unbalanced brackets in gold trees", lambda f, o: G + ["--corpus", f["corpus"], "--gold", f["gold_syntax"], "--out", o], "gold"),
    ("grammar file: a row does not sum to 1", lambda f, o: G + ["--grammar", f["g_rows"], "--out", o], "sum"),
    ("grammar file: NaN", lambda f, o: G + ["--grammar", f["g_nan"], "--out", o], "NaN"),
    ("grammar file: negative entry", lambda f, o: G + ["--grammar", f["g_neg"], "--out", o], "negative"),
    ("grammar file: shapes disagree", lambda f, o: G + ["--grammar", f["g_shape"], "--out", o], "binary"),
    ("grammar file: vocabulary size differs from emit", lambda f, o: G + ["--grammar", f["g_vocab"], "--out", o], "vocab"),
    ("grammar file: not an .npz", lambda f, o: G + ["--grammar", f["not_npz"], "--out", o], "grammar"),
    ("grammar: --posterior-only without a grammar file", lambda f, o: G + ["--method", "gflownet", "--posterior-only", "--out", o], "--posterior-only"),
    ("grammar: --policy-dim not a multiple of --policy-heads", lambda f, o: G + ["--method", "gflownet", "--policy-dim", "30", "--policy-heads", "4", "--out", o], "--policy-dim"),
    ("grammar: --ncfg with exact marginalisation", lambda f, o: G + ["--grammar", "ncfg", "--method", "marginal", "--out", o], "ncfg"),
    ("grammar: --temperature 0", lambda f, o: G + ["--method", "gflownet", "--temperature", "0", "--out", o], "--temperature"),
    ("grammar: --sleep above 1", lambda f, o: G + ["--method", "gflownet", "--sleep", "1.5", "--out", o], "--sleep"),
    ("ebm: .npy data with values other than 0/1", lambda f, o: ["train", "ebm", "--data", f["npy_values"], "--steps", "2", "--out", o], "0 and 1"),
    ("ebm: .npy data not [n, d]", lambda f, o: ["train", "ebm", "--data", f["npy_shape"], "--steps", "2", "--out", o], "shape"),
    ("ebm: unknown density", lambda f, o: ["train", "ebm", "--data", "3spirals", "--steps", "2", "--out", o], "--data"),
    ("dvae: .npz images that are not square", lambda f, o: ["train", "dvae", "--data", f["npz_images"], "--steps", "2", "--out", o], "square"),
    ("dvae: truncated MNIST IDX file", lambda f, o: ["train", "dvae", "--data", f["idx_dir"], "--steps", "2", "--out", o], "IDX"),
    ("dag: --data CSV with a word among the numbers", lambda f, o: ["train", "dag", "--num-nodes", "3", "--data", f["csv_text"], "--out", o], "line 3"),
    ("dag: --data with another number of variables", lambda f, o: ["train", "dag", "--data", f["npy_cols"], "--out", o], "--num-nodes"),
    ("hypergrid: --seed beyond 2^32", lambda f, o: ["train", "hypergrid", "--seed", "99999999999999999999", "--out", o], "--seed"),
    ("hypergrid: --r0 inf", lambda f, o: ["train", "hypergrid", "--r0", "inf", "--out", o], "--r0"),
    ("hypergrid: --devices beyond the visible devices", lambda f, o: ["train", "hypergrid", "--devices", "64", "--out", o], "--devices"),
    ("hypergrid: --out under a regular file", lambda f, o: ["train", "hypergrid", "--steps", "2", "--out", os.path.join(f["file"], "run")], "--out"),
    ("train: a batch that cannot fit in memory", lambda f, o: ["train", "hypergrid", "--batch-size", "100000000000", "--out", o], "needs at least"),
    ("sample: --n whose output cannot fit on disk", lambda f, o: ["sample", "--run", f["run_cfg"], "--n", "100000000000000", "--out", os.path.join(os.path.dirname(o), "x.npy")], "of disk"),
    ("grammar file: truncated .npz", lambda f, o: G + ["--grammar", f["npz_truncated"], "--out", o], "truncated"),
    ("parse: truncated .npz grammar", lambda f, o: ["parse", "--grammar", f["npz_truncated"], "--corpus", f["corpus"], "--out", os.path.join(o, "p.jsonl")], "truncated"),
    ("parse: --out in a missing directory", lambda f, o: ["parse", "--grammar", f["g_ok"], "--corpus", f["corpus"], "--out", os.path.join(o, "nodir", "p.jsonl")], "does not exist"),
    ("parse: --run with a damaged vocab.json", lambda f, o: ["parse", "--run", f["run_badvocab"], "--corpus", f["corpus"], "--out", os.path.join(os.path.dirname(o), "p.jsonl")], "vocab.json"),
    ("export-grammar: --out in a missing directory", lambda f, o: ["export-grammar", "--run", f["run_nockpt"], "--out", os.path.join(o, "nodir", "g.npz")], "does not exist"),
    ("eval grammar: --run with a damaged config.json", lambda f, o: ["eval", "grammar", "--run", f["run_badcfg"]], "config.json"),
    ("eval grammar: --gold without --corpus", lambda f, o: ["eval", "grammar", "--run", f["run_nocfg"], "--gold", f["gold_count"]], "--corpus"),
    ("hypergrid: --resume with --overwrite", lambda f, o: ["train", "hypergrid", "--steps", "2", "--resume", "--overwrite", "--out", f["run_nocfg"]], "pass one"),
    ("hypergrid: --overwrite of a folder that is not a run", lambda f, o: ["train", "hypergrid", "--steps", "2", "--overwrite", "--out", f["idx_dir"]], "not a gfnem run"),
    ("sample: --out in a missing directory", lambda f, o: ["sample", "--run", f["run_nocfg"], "--out", os.path.join(o, "nodir", "x.npy")], "does not exist"),
    ("hypergrid: --resume of a folder holding no run", lambda f, o: ["train", "hypergrid", "--steps", "2", "--resume", "--out", f["run_nocfg"]], "resume"),
    ("several processes: --process-id out of range", lambda f, o: ["train", "hypergrid", "--num-processes", "2", "--process-id", "5", "--coordinator", "h:1", "--out", o], "--process-id"),
    ("sample: --run without config.json", lambda f, o: ["sample", "--run", f["run_nocfg"], "--out", os.path.join(os.path.dirname(o), "x.npy")], "--run"),
    ("sample: --run with a damaged config.json", lambda f, o: ["sample", "--run", f["run_badcfg"], "--out", os.path.join(os.path.dirname(o), "x.npy")], "config.json is damaged"),
    ("sample: --n 0", lambda f, o: ["sample", "--run", f["run_nocfg"], "--n", "0", "--out", os.path.join(os.path.dirname(o), "x.npy")], "--n"),
    ("parse: --run without config.json", lambda f, o: ["parse", "--run", f["run_nocfg"], "--corpus", f["corpus"], "--out", os.path.join(o, "p.jsonl")], "config.json"),
    ("parse: unknown --decoder", lambda f, o: ["parse", "--grammar", f["g_rows"], "--corpus", f["corpus"], "--decoder", "best-of-0", "--out", os.path.join(o, "p.jsonl")], "decoder"),
    ("export-grammar: --run without config.json", lambda f, o: ["export-grammar", "--run", f["run_nocfg"], "--out", os.path.join(o, "g.npz")], "config.json"),
]


@pytest.mark.parametrize("what,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, what, argv, needle):
    f = _files(tmp_path)
    out = str(tmp_path / "out")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        cli.main(argv(f, out))
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if not l.startswith("WARNING")]
    assert e.value.code == 2, err
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), lines
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written (no out, no new files)
    assert not os.listdir(f["run_nocfg"])


def test_the_docs_table_lists_every_case():
    text = open(DOCS).read()
    missing = [c[0] for c in CASES if c[0] not in text]
    assert not missing, f"docs/bad_inputs.rst lacks: {missing}"
    assert len(CASES) >= 25
