"""Parsing a text corpus with a trained grammar (``gfnem parse``) and exporting a learned PCFG.

Output: one JSON line per sentence of 2..max_len words, in order:
{"logprob": log p(x) or null (NCFG without exact inference), "spans": [[i, j], ...]} (inclusive).
"""
from __future__ import annotations

import json
from typing import Dict, Optional

import jax
import numpy as np

from gfnem_jax.grammar import corpus as C
from gfnem_jax.grammar import decode as DEC
from gfnem_jax.grammar import gfn_em
from gfnem_jax.grammar import rules as G

DECODERS = ("viterbi", "sample", "greedy", "best-of-K")


def samples_of(decoder: str) -> int:
    """K of decoder best-of-K, 1 for the others; ValueError naming the allowed decoders."""
    if decoder in DECODERS[:3]:
        return 1
    if decoder.startswith("best-of-") and decoder[8:].isdigit() and int(decoder[8:]) >= 1:
        return int(decoder[8:])
    raise ValueError(f"decoder must be viterbi, sample, greedy or best-of-K (K >= 1, e.g. "
                     f"best-of-8), got {decoder!r}")


def parse(corpus: str, out: str, model, params, vocab, max_len: int, unknown: str,
          mcmc_steps: int, decoder: str = "viterbi", seed: int = 0, batch: int = 64,
          gflownet: Optional[tuple] = None) -> Dict[str, int]:
    """Parse every sentence of 2..max_len words of the text file ``corpus`` with grammar
    ``model`` (parameters ``params``, vocabulary ``vocab``; unknown words: ``unknown``, "unk" or
    "error"); write the JSON lines (module doc) to ``out``. Returns counts.

    decoder: viterbi (the grammar's most likely tree; NCFG: an MH chain of ``mcmc_steps``),
    sample (a posterior sample: exact for a CFG, or the GFlowNet's with ``gflownet``; line i uses
    key fold_in(key, i)), greedy (argmax of the GFlowNet's P_F at every step) or best-of-K (the
    best of K GFlowNet samples under p(x, z)); the last two need ``gflownet`` = (settings,
    restored state) of a gflownet run."""
    k = samples_of(decoder)
    if (decoder == "greedy" or decoder.startswith("best-of-")) and gflownet is None:
        raise ValueError(f"decoder {decoder} needs a run trained with method gflownet")
    sents = [l.split() for l in C.read_lines(corpus, "corpus")]
    keep = [t for t in sents if 2 <= len(t) <= max_len]
    words, lengths, n_unk = C.encode(keep, vocab, max_len, unknown)
    decode = DEC.make_decoder(model, max_len, mcmc_steps)
    key = jax.random.PRNGKey(seed)
    logp, vsp, ssp = DEC.grammar_spans(decode, params, key, words, lengths, batch)
    if gflownet is not None and decoder != "viterbi":
        s, state = gflownet
        b = gfn_em.build(s, model, model.vocab_size)
        gdec = DEC.make_gfn_decoder(b.env, b.gfn, model.rule_log_probs, k)
        _, spans = DEC.gfn_spans(gdec, state.sampler, state.model, key, words, lengths, batch)
        ssp = spans["greedy_" if decoder == "greedy" else "best_" if k > 1 else "gfn_"]
    with open(out, "w") as f:
        for lp, sp in zip(logp, vsp if decoder == "viterbi" else ssp):
            f.write(json.dumps({"logprob": None if np.isnan(lp) else float(lp), "spans": sp}) + "\n")
    return {"parsed": len(keep), "skipped": len(sents) - len(keep), "unk_tokens": n_unk}


def export(model, params, vocab, out_path: str) -> None:
    """Write the PCFG of grammar ``model`` with ``params`` as a .npz grammar file."""
    G.save_npz(out_path, model.rule_log_probs(params), vocab)
