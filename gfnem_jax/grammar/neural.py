"""Neural PCFG (Kim et al. 2019, N-PCFG) and its non-context-free variant (NCFG).

Rule log-probabilities come from symbol embeddings (dimension ``dim``, 256 by default) through MLPs:
  root   log p(S -> A)   = log_softmax(Linear_NT(Res(Res(relu(Linear(e_S))))))
  binary log p(A -> B C) = log_softmax over (B, C) of Linear_{S_^2}(e_A)            (PCFG)
         log p(A -> B C | parent P) = log_softmax of Linear_{S_^2}(Res(e_A + f_P))  (NCFG;
         P in 0..NT, NT = the start symbol, i.e. A is the root)
  emit   log p(T -> w)   = log_softmax(Linear_V(Res(Res(relu(Linear(e_T))))))
with Res(h) = h + relu(Linear(relu(Linear(h)))). The output is a grammar pytree as in
``gfnem_jax.grammar.rules`` (binary float[NT, S_, S_] or float[NT+1, NT, S_, S_]).

``NeuralGrammar(nt, pt, vocab_size, dim, ncfg)`` is a frozen dataclass of pure methods:
  init(key) -> params; rule_log_probs(params) -> grammar; log_joint(params, words, tree) -> float[].
``TableGrammar`` has the same methods for a grammar given as log-prob tables (params = the tables).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.grammar import rules as G
from gfnem_jax.startup import compiled_method


class _Res(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, h):
        return h + nn.relu(nn.Dense(self.dim)(nn.relu(nn.Dense(self.dim)(h))))


class _Rules(nn.Module):
    nt: int
    pt: int
    vocab_size: int
    dim: int = 256
    ncfg: bool = False

    @nn.compact
    def __call__(self):
        s = self.nt + self.pt
        init = nn.initializers.normal(1.0 / self.dim ** 0.5)
        e_root = self.param("root_emb", init, (1, self.dim))
        e_nt = self.param("nt_emb", init, (self.nt, self.dim))
        e_pt = self.param("pt_emb", init, (self.pt, self.dim))
        h = nn.relu(nn.Dense(self.dim, name="root_in")(e_root))
        h = _Res(self.dim, name="root_res2")(_Res(self.dim, name="root_res1")(h))
        root = jax.nn.log_softmax(nn.Dense(self.nt, name="root_out")(h)[0])
        if self.ncfg:
            e_par = self.param("parent_emb", init, (self.nt + 1, self.dim))
            hb = _Res(self.dim, name="rule_res")(e_nt[None] + e_par[:, None])  # [NT+1, NT, dim]
            logits = nn.Dense(s * s, name="rule_out")(hb)
            binary = jax.nn.log_softmax(logits, -1).reshape(self.nt + 1, self.nt, s, s)
        else:
            logits = nn.Dense(s * s, name="rule_out")(e_nt)
            binary = jax.nn.log_softmax(logits, -1).reshape(self.nt, s, s)
        h = nn.relu(nn.Dense(self.dim, name="term_in")(e_pt))
        h = _Res(self.dim, name="term_res2")(_Res(self.dim, name="term_res1")(h))
        emit = jax.nn.log_softmax(nn.Dense(self.vocab_size, name="term_out")(h), -1)
        return {"root": root, "binary": binary, "emit": emit}


@dataclasses.dataclass(frozen=True)
class NeuralGrammar:
    """N-PCFG (ncfg=False) or NCFG (ncfg=True) with sizes NT, PT, V and embedding ``dim``."""

    nt: int = 30
    pt: int = 60
    vocab_size: int = 10000
    dim: int = 256
    ncfg: bool = False

    def __post_init__(self):
        for name in ("nt", "pt", "vocab_size", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def module(self) -> _Rules:
        return _Rules(self.nt, self.pt, self.vocab_size, self.dim, self.ncfg)

    @compiled_method
    def init(self, key):
        return self.module.init(key)

    def rule_log_probs(self, params):
        """The grammar pytree of log-probabilities (see module doc)."""
        return self.module.apply(params)

    def log_joint(self, params, words, tree) -> jax.Array:
        """Exact log p_theta(x, z) (PCFG or NCFG), preterminals summed out."""
        return G.log_joint(self.rule_log_probs(params), words, tree)


@dataclasses.dataclass(frozen=True)
class TableGrammar:
    """A grammar whose parameters are its log-prob tables (e.g. loaded from a .npz file)."""

    nt: int
    pt: int
    vocab_size: int
    ncfg: bool = False

    def init(self, key):
        return G.random_grammar(key, self.nt, self.pt, self.vocab_size, scale=0.0, ncfg=self.ncfg)

    def rule_log_probs(self, params):
        return params

    def log_joint(self, params, words, tree) -> jax.Array:
        return G.log_joint(params, words, tree)


def rule_log_probs(model, params):
    """Pure function form: ``model.rule_log_probs(params)``."""
    return model.rule_log_probs(params)
