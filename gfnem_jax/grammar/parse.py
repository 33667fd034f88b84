"""Parsing a text corpus with a trained grammar (``gfnem parse``) and exporting a learned PCFG.

Output: ONE JSON line per line of the input file, in order (output line i is input line i):
  {"logprob": L, "spans": [[i, j], ...]}  for a parsed sentence of n words, where
    logprob  log p(x), the natural log of the sentence's probability under the grammar
             (marginalised over all trees by the inside algorithm; an NCFG through its parent
             annotation); the same whatever the decoder; null for an NCFG too large to annotate;
    spans    the n - 1 constituents (internal nodes) of the decoded binary tree, each [i, j] with
             0-based word indices and INCLUSIVE ends (words i..j), in no particular order; the
             whole sentence [0, n - 1] is one of them, single words are not; e.g. "the dog
             barks" parsed ((the dog) barks): [[0, 1], [0, 2]];
  null  for a line that is skipped: an empty line, a line of one word, a line of more than max_len
        words, or a line holding a word that is not in the grammar's vocabulary when the
        vocabulary has no <unk> (with <unk>, as for every run, unknown words are read as <unk>).
``parse`` returns what was skipped, by reason, with line numbers.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import decode as DEC
from gfnem_jax.grammar import gfn_em
from gfnem_jax.grammar import rules as G

# reasons a line is skipped (written as null), in the order they are checked
SKIP_REASONS = ("empty", "one_word", "too_long", "unknown_word")

DECODERS = ("viterbi", "sample", "greedy", "best-of-K")


def samples_of(decoder: str) -> int:
    """K of decoder best-of-K, 1 for the others; ValueError naming the allowed decoders."""
    if decoder in DECODERS[:3]:
        return 1
    if decoder.startswith("best-of-") and decoder[8:].isdigit() and int(decoder[8:]) >= 1:
        return int(decoder[8:])
    raise ValueError(f"decoder must be viterbi, sample, greedy or best-of-K (K >= 1, e.g. "
                     f"best-of-8), got {decoder!r}")


def check_out_file(path: str) -> None:
    """ValueError unless the output file ``path`` can be written: its directory must exist
    (nothing is created), and it must not be a directory."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"output file {path!r} is a directory")
    if not os.path.isdir(d):
        raise ValueError(f"output file {path!r}: its directory {os.path.dirname(path)!r} does "
                         f"not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ValueError(f"output file {path!r}: its directory {os.path.dirname(path)!r} is not "
                         f"writable")


def read_corpus(corpus: str, vocab, max_len: int) -> Dict[str, Any]:
    """Every line of the text file ``corpus``, sorted into parsed and skipped (module doc).

    Returns {"lines": number of lines, "keep": [(line number, words)], "skipped": {reason: [line
    numbers]}, "unknown": {line number: the first unknown word} (of the skipped lines with an
    unknown word, or of the lines with words read as <unk>), "unk_tokens": words read as <unk>}."""
    has_unk = C.UNK in vocab
    index = set(vocab)
    numbered = C.read_numbered(corpus, "corpus")
    keep, skipped = [], {r: [] for r in SKIP_REASONS}
    unknown: Dict[int, str] = {}
    n_unk = 0
    for k, line in numbered:
        words = line.split()
        if not words:
            skipped["empty"].append(k)
        elif len(words) < 2:
            skipped["one_word"].append(k)
        elif len(words) > max_len:
            skipped["too_long"].append(k)
        else:
            new = [w for w in words if w not in index]
            if new:
                unknown[k] = new[0]
                if not has_unk:
                    skipped["unknown_word"].append(k)
                    continue
                n_unk += len(new)
            keep.append((k, words))
    return {"lines": len(numbered), "keep": keep, "skipped": skipped, "unknown": unknown,
            "unk_tokens": n_unk, "has_unk": has_unk}


def parse(corpus: str, out: str, model, params, vocab, max_len: int, mcmc_steps: int,
          decoder: str = "viterbi", seed: int = 0, batch: int = 64,
          gflownet: Optional[tuple] = None) -> Dict[str, Any]:
    """Parse every sentence of 2..max_len words of the text file ``corpus`` with grammar
    ``model`` (parameters ``params``, vocabulary ``vocab``) and write one JSON line per input
    line to ``out`` (module doc). Unknown words: read as <unk> when ``vocab`` has it, else the
    line is skipped. Returns ``read_corpus``'s report (less "keep") with "parsed" = the number
    of sentences parsed.

    decoder: viterbi (the grammar's most likely tree; NCFG: an MH chain of ``mcmc_steps``),
    sample (a posterior sample: exact for a CFG, or the GFlowNet's with ``gflownet``),
    greedy (argmax of the GFlowNet's P_F at every step) or best-of-K (the best of K GFlowNet
    samples under p(x, z)); the last two need ``gflownet`` = (settings, restored state) of a
    gflownet run. The draws of the i-th parsed sentence depend on i, the seed and the batch."""
    k = samples_of(decoder)
    if (decoder == "greedy" or decoder.startswith("best-of-")) and gflownet is None:
        raise ValueError(f"decoder {decoder} needs a run trained with method gflownet")
    check_out_file(out)
    rep = read_corpus(corpus, vocab, max_len)
    keep = rep.pop("keep")
    results: List[Any] = []
    if keep:
        words, lengths, _ = C.encode([w for _, w in keep], vocab, max_len, "unk")
        decode = DEC.make_decoder(model, max_len, mcmc_steps)
        key = jax.random.PRNGKey(seed)
        logp, vsp, ssp = DEC.grammar_spans(decode, params, key, words, lengths, batch)
        if gflownet is not None and decoder != "viterbi":
            s, state = gflownet
            b = gfn_em.build(s, model, model.vocab_size)
            gdec = DEC.make_gfn_decoder(b.env, b.gfn, model.rule_log_probs, k)
            _, spans = DEC.gfn_spans(gdec, state.sampler, state.model, key, words, lengths, batch)
            ssp = spans["greedy_" if decoder == "greedy" else "best_" if k > 1 else "gfn_"]
        results = [{"logprob": None if np.isnan(lp) else float(lp), "spans": sp}
                   for lp, sp in zip(logp, vsp if decoder == "viterbi" else ssp)]
    by_line = dict(zip((n for n, _ in keep), results))
    with open(out, "w") as f:
        for n in range(1, rep["lines"] + 1):
            f.write(json.dumps(by_line.get(n)) + "\n")
    rep["parsed"] = len(keep)
    return rep


def skip_notice(rep: Dict[str, Any], max_len: int, first: int = 5) -> List[str]:
    """Lines for stderr: the skipped lines by reason with their first ``first`` line numbers,
    and the lines whose unknown words were read as <unk>."""
    what = {"empty": "empty", "one_word": "of one word", "too_long": f"longer than max_len = "
            f"{max_len} words", "unknown_word": f"with a word not in the grammar's vocabulary, "
            f"which has no {C.UNK}"}
    plural = lambda n, w: f"{n} {w}" + ("" if n == 1 else "s")

    def lines(ns):
        more = f", ... ({len(ns) - first} more)" if len(ns) > first else ""
        return ("line " if len(ns) == 1 else "lines ") + ", ".join(map(str, ns[:first])) + more

    out = []
    parts = [f"{len(ns)} {what[r]} ({lines(ns)}" + (f"; first: {rep['unknown'][ns[0]]!r}"
                                                     if r == "unknown_word" else "") + ")"
             for r, ns in rep["skipped"].items() if ns]
    n = sum(len(ns) for ns in rep["skipped"].values())
    if n:
        out.append(f"skipped {n} of {rep['lines']} lines (written as null): " + "; ".join(parts))
    if rep["has_unk"] and rep["unknown"]:
        ns = sorted(rep["unknown"])
        out.append(f"read {plural(rep['unk_tokens'], 'unknown word')} as {C.UNK} in "
                   f"{plural(len(ns), 'sentence')} ({lines(ns)}; first: {rep['unknown'][ns[0]]!r})")
    return out


def export(model, params, vocab, out_path: str) -> None:
    """Write the PCFG of grammar ``model`` with ``params`` as a .npz grammar file."""
    G.save_npz(out_path, model.rule_log_probs(params), vocab)
