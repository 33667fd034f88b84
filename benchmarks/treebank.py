"""Grammar induction on real treebanks: right / left branching, exact EM and GFlowNet-EM, scored by
unlabelled span F1 against the gold trees and NLL per token (docs/experiments/grammar.rst).

Data is read from paths you give (nothing is downloaded):
  --ptb DIR   the official GFlowNet-EM repository's ``grammars/data/ptb_cpcfg`` (Kim et al.'s
              preprocessed PTB: SPLIT.src + SPLIT-trees.pkl, read by a pickle reader that admits
              only lists, tuples, integers and strings). Trains on train.src when DIR has it,
              else on valid.src; evaluates on test.
  --ewt DIR   Universal Dependencies English-EWT (en_ewt-ud-{train,dev,test}.conllu): gold spans
              from projective dependency subtrees, punctuation dropped. Trains on train (+ dev)
              when present, else on dev; evaluates on test.
  --ud DIR ...  any other UD treebank folder (<lang>_<name>-ud-{train,dev,test}.conllu), read
              as EWT is; e.g. English-GUM, whose train file the snapshot lacks but whose
              per-document sources it has: concatenate not-to-release/sources/<doc>.conllu for
              each <doc> of not-to-release/file-lists/files.train (docs/experiments/grammar.rst).
  --bracketed TRAIN TEST   your own Penn-bracketed trees.

Each method is one ``gfnem train grammar`` run (a subprocess, so each row is what the CLI gives)
with a step budget (``--steps``, per method), writing OUT/runs/CORPUS-METHOD; the table (stdout,
OUT/treebank.md) and OUT/treebank.json hold the last evaluation of each run, its wall time and
the command. A finished run is reused when rerun with the same command (delete it to redo).

  python benchmarks/treebank.py --ptb PATH/ptb_cpcfg --ewt PATH/UD_English-EWT \\
      --out benchmarks/results/treebank
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

from gfnem_jax.grammar import metrics as M
from gfnem_jax.grammar import treebank as TB


def _gfn_em(grammar: str, policy: list) -> list:
    """Flags of a GFlowNet-EM run: ``grammar`` cfg / ncfg, ``policy`` the policy's own flags,
    then the CPU-sized policy width and the fixed E/M schedule every such row shares."""
    return ["--method", "gflownet", "--grammar", grammar, *policy, "--policy-dim", "64",
            "--policy-enc-layers", "1", "--schedule", "fixed", "--e-steps", "2", "--m-steps", "1"]


SPAN, TRANSFORMER = ["--policy", "span"], ["--policy-layers", "2"]
# method -> (flags, default steps); the grammar size is the script's --nt / --pt / --dim
METHODS = {
    "exact-em": (["--method", "marginal", "--grammar", "cfg"], 1500),
    "gfn-em-cfg": (_gfn_em("cfg", SPAN), 3000),
    "gfn-em-ncfg": (_gfn_em("ncfg", SPAN), 3000),
    "gfn-em-cfg-transformer": (_gfn_em("cfg", TRANSFORMER), 1000),
    "gfn-em-ncfg-transformer": (_gfn_em("ncfg", TRANSFORMER), 1000),
}
COLS = ["corpus_f1", "sentence_f1", "sample_corpus_f1", "gfn_corpus_f1", "best_corpus_f1",
        "nll_per_token", "is_nll_per_token"]


def prepare(args) -> dict:
    """{corpus name: (train text, train gold, test text, test gold)} written under OUT/data."""
    data = os.path.join(args.out, "data")
    out = {}

    def put(name, train, test):
        paths = [os.path.join(data, f"{name}-{p}") for p in ("train.txt", "train.gold",
                                                               "test.txt", "test.gold")]
        n_tr = TB.write(*train, paths[0], paths[1], args.max_len)
        n_te = TB.write(*test, paths[2], paths[3], args.max_len)
        print(f"{name}: {n_tr} training and {n_te} test sentences of 2..{args.max_len} words",
              flush=True)
        out[name] = paths

    if args.ptb:
        has_train = os.path.exists(os.path.join(args.ptb, "train.src"))
        put("ptb", TB.read_ptb_split(args.ptb, "train" if has_train else "valid"),
            TB.read_ptb_split(args.ptb, "test"))
    for folder in ([args.ewt] if args.ewt else []) + list(args.ud or []):
        name, f = ud_files(folder)
        parts = [f("train"), f("dev")] if os.path.exists(f("train")) else [f("dev")]
        sents, gold = [], []
        for p in parts:
            s, g = TB.read_conllu(p)
            sents += s
            gold += g
        put(name, (sents, gold), TB.read_conllu(f("test")))
    if args.bracketed:
        put("own", TB.read_bracketed(args.bracketed[0]), TB.read_bracketed(args.bracketed[1]))
    return out


def ud_files(folder: str):
    """(corpus name, split -> path) of a Universal Dependencies folder holding
    ``<lang>_<name>-ud-{train,dev,test}.conllu`` (e.g. en_ewt, en_gum): the name is ``<name>``."""
    tests = sorted(f for f in os.listdir(folder) if f.endswith("-ud-test.conllu"))
    if len(tests) != 1:
        raise SystemExit(f"{folder}: expected one *-ud-test.conllu file, found {tests or 'none'}")
    prefix = tests[0][:-len("-ud-test.conllu")]
    return prefix.split("_", 1)[-1], lambda s: os.path.join(folder, f"{prefix}-ud-{s}.conllu")


def branching(test_txt, test_gold, eval_size: int = 0) -> dict:
    """Right- and left-branching scored on the sentences the runs are evaluated on: the first
    ``eval_size`` of the test file (all for 0), as ``gfnem train grammar --eval-size`` takes."""
    sents = [l.split() for l in open(test_txt, encoding="utf-8") if l.strip()]
    gold = [TB.C.parse_bracketed(l)[1] for l in open(test_gold, encoding="utf-8") if l.strip()]
    if eval_size:
        sents, gold = sents[:eval_size], gold[:eval_size]
    n = [len(s) for s in sents]
    rows = {}
    for name, f in (("right-branching", M.right_branching), ("left-branching", M.left_branching)):
        sc = M.span_f1([f(k) for k in n], gold, n)
        rows[name] = {"corpus_f1": sc["corpus_f1"], "sentence_f1": sc["sentence_f1"],
                      "wall_s": 0.0, "command": "(closed form)"}
    return rows


def run_method(args, corpus, paths, method) -> dict:
    flags, steps = METHODS[method]
    steps = args.steps.get(method, steps)
    out = os.path.join(args.out, "runs", f"{corpus}-{method}")
    cmd = ["gfnem", "train", "grammar", *flags, "--corpus", paths[0], "--gold", paths[1],
           "--valid", paths[2], "--valid-gold", paths[3], "--max-len", str(args.max_len),
           "--nt", str(args.nt), "--pt", str(args.pt), "--dim", str(args.dim),
           "--steps", str(steps), "--log-every", str(max(1, steps // args.evals)),
           "--eval-size", str(args.eval_size), "--seed", str(args.seed), "--out", out]
    cmd_s = " ".join(shlex.quote(c) for c in cmd)
    done = os.path.join(out, "treebank_row.json")
    if os.path.exists(done):
        row = json.load(open(done))
        if row.get("command") == cmd_s:
            print(f"{corpus} {method}: reusing {out}", flush=True)
            return row
    print(f"{corpus} {method}: {cmd_s}", flush=True)
    t0 = time.time()
    res = subprocess.run(cmd + ["--overwrite"], stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        return {"error": f"exit {res.returncode}", "command": cmd_s}
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    last = [r for r in rows if r.get("corpus_f1") is not None or r.get("gfn_corpus_f1") is not None]
    row = {k: (last[-1].get(k) if last else None) for k in COLS}
    row["curve"] = [{k: r.get(k) for k in ["step"] + COLS} for r in last]
    row.update(wall_s=round(time.time() - t0, 1), steps=steps, command=cmd_s)
    json.dump(row, open(done, "w"))
    return row


def table(results) -> str:
    head = "| corpus | method | " + " | ".join(COLS) + " | wall s |"
    lines = [head, "|" + "---|" * (len(COLS) + 3)]
    for corpus, rows in results.items():
        for method, r in rows.items():
            f = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
            lines.append(f"| {corpus} | {method} | " + " | ".join(f(r.get(c)) for c in COLS)
                         + f" | {f(r.get('wall_s'))} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ptb", help="folder of ptb_cpcfg (SPLIT.src, SPLIT-trees.pkl)")
    p.add_argument("--ewt", help="folder of UD English-EWT (.conllu files)")
    p.add_argument("--ud", nargs="+", metavar="DIR",
                   help="folders of other UD treebanks (<lang>_<name>-ud-{train,dev,test}.conllu)")
    p.add_argument("--bracketed", nargs=2, metavar=("TRAIN", "TEST"),
                   help="your own Penn-bracketed training and test trees")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", nargs="*", default=[], metavar="METHOD=N",
                   help="step budget per method (defaults: " +
                        ", ".join(f"{k}={v[1]}" for k, v in METHODS.items()) + ")")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--nt", type=int, default=10)
    p.add_argument("--pt", type=int, default=20)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--evals", type=int, default=5, help="evaluations per run (learning curve)")
    p.add_argument("--eval-size", type=int, default=0, help="test sentences evaluated (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.ptb or args.ewt or args.ud or args.bracketed):
        p.error("give at least one of --ptb, --ewt, --bracketed (nothing is downloaded)")
    try:
        args.steps = {k: int(v) for k, v in (s.split("=") for s in args.steps)}
    except ValueError:
        p.error("--steps takes METHOD=N pairs")
    try:
        data = prepare(args)
    except ValueError as e:
        p.error(str(e))
    results = {}
    for corpus, paths in data.items():
        results[corpus] = branching(paths[2], paths[3], args.eval_size)
        for method in args.methods:
            results[corpus][method] = run_method(args, corpus, paths, method)
            print(table({corpus: {method: results[corpus][method]}}).splitlines()[-1], flush=True)
    md = table(results)
    print(md)
    with open(os.path.join(args.out, "treebank.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "treebank.json"), "w") as f:
        json.dump({"settings": {k: v for k, v in vars(args).items()}, "results": results}, f,
                  indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
