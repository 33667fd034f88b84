"""A cheap parse-forest policy: roots from their span endpoints, only the candidate merges scored.

``SpanPolicy`` implements ``gfnem_jax.nets.policy.Policy`` for ``grammar.env.ParseTree`` with the
same observation and outputs as ``grammar.policy.ParsePolicy`` (the paper's transformer over the
roots), so ``GFlowNet(env, SpanPolicy(...), ...)`` and the ``grammar.rollout.Buckets`` engine use
it unchanged. There is no attention over roots: a state's cost is O(K d^2) for K root slots with
a small constant, against the transformer's O(K * 12 d^2 * layers).

  encode_cond(params, cond) -> ctx   the sentence, ONCE per trajectory: token + position
      embeddings through ``enc_layers`` pre-LN transformer blocks over the words (attention
      masked to the sentence) -> w float[L, d] (0 past the sentence). ctx = {
        "left":  Dense_l(w)  float[L, d]   (a root's start-word contribution),
        "right": Dense_r(w)  float[L, d]   (a root's end-word contribution),
        "pooled": mean of w over the words, float[d]}.
  apply(params, obs, ctx) -> PolicyOutput   one state, K <= L root slots (``policy.shrink``).
      Root q with span [i, j] and label A (A = -1: a word):
        e_q = Dense(gelu(left[i] + right[j] + Emb(A + 1)))   float[K, d]
      i.e. MLP([w_i; w_j; emb(A)]) with its first layer split by input; padding slots (mask
      False) are set to 0. Heads:
        fwd_logits[p * NT + B] = MLP([e_{p-1}; e_p; e_{p+1}; e_{p+2}])_B  (merge roots p, p+1
                                 under B; out-of-range neighbours are 0)         [(L-1)*NT]
        bwd_logits[q] = Dense(e_q)              (learned P_B: split root q)      [L]
        log_flow = MLP([masked mean of e; pooled])                               []
  log_z(params, ctx) = MLP(ctx["pooled"])  (log Z(x)); ``log_z_mask`` marks it.

Outputs are padded back to the full action spaces (padding logits 0: those actions are illegal
whenever K >= r and the library masks them). Since padded slots are zeroed before any head and
a merge sees only its two roots and their neighbours, the outputs on the live actions do not
depend on K, on the padding, or on the other sentences of a batch (everything is per sentence;
the library vmaps). As with ``ParsePolicy``, the forward-looking flow term g(theta, x, s) is
added by the task, this network returns only NN(s).

Sizes: ``SpanPolicy.small(...)`` (d = 64, 1 encoder layer) for CPU runs and tests.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from gfnem_jax.grammar.policy import Block, NetPolicy, _MLP, encode_words
from gfnem_jax.nets.policy import PolicyOutput


class SpanNet(nn.Module):
    max_len: int
    n_nt: int
    vocab: int
    dim: int
    heads: int
    enc_layers: int

    def setup(self):
        L, d = self.max_len, self.dim
        self.tok_emb = nn.Embed(self.vocab, d)
        self.pos_emb = nn.Embed(L, d)
        self.enc = [Block(d, self.heads) for _ in range(self.enc_layers)]
        self.enc_ln = nn.LayerNorm()
        self.left_proj = nn.Dense(d)
        self.right_proj = nn.Dense(d, use_bias=False)
        self.label_emb = nn.Embed(self.n_nt + 1, d)
        self.root_out = nn.Dense(d)
        self.fwd_head = _MLP(d, self.n_nt)
        self.bwd_head = nn.Dense(1)
        self.flow_head = _MLP(d, 1)
        self.logz_mlp = _MLP(d, 1)

    def encode(self, tokens, length):
        """tokens int32[L], length int32[] -> ctx {"left", "right": float[L, d], "pooled": [d]}."""
        w = encode_words(self, tokens, length)
        pooled = jnp.sum(w, 0) / jnp.maximum(length, 1).astype(w.dtype)
        return {"left": self.left_proj(w), "right": self.right_proj(w), "pooled": pooled}

    def roots(self, obs, ctx):
        """obs leaves [K] -> root representations float[K, d], 0 on padding slots."""
        L, NT = self.max_len, self.n_nt
        i = jnp.clip(obs["start"], 0, L - 1)
        j = jnp.clip(obs["end"], 0, L - 1)
        h = ctx["left"][i] + ctx["right"][j] + self.label_emb(jnp.clip(obs["label"] + 1, 0, NT))
        e = self.root_out(nn.gelu(h))
        return jnp.where(obs["mask"][:, None], e, 0.0)

    def state(self, obs, ctx):
        L = self.max_len
        e = self.roots(obs, ctx)  # [K, d]
        K, d = e.shape
        z = jnp.zeros((1, d), e.dtype)
        ez = jnp.concatenate([z, e, z], 0)  # [K + 2, d]; ez[q + 1] = e_q
        # merge p (p < K - 1): neighbours p - 1 and p + 2 (zero outside the slots / on padding)
        quad = jnp.concatenate([ez[0:K - 1], ez[1:K], ez[2:K + 1], ez[3:K + 2]], axis=-1)
        fwd = self.fwd_head(quad)  # [K-1, NT]
        fwd = jnp.pad(fwd, ((0, L - K), (0, 0))).reshape(-1)
        bwd = jnp.pad(self.bwd_head(e)[:, 0], (0, L - K))
        m = obs["mask"].astype(e.dtype)
        mean = jnp.sum(e, 0) / jnp.maximum(jnp.sum(m), 1.0)
        flow = self.flow_head(jnp.concatenate([mean, ctx["pooled"]]))[0]
        return PolicyOutput(fwd, bwd, flow)

    def logz(self, ctx):
        return self.logz_mlp(ctx["pooled"])[0]

    def __call__(self, tokens, length, obs):
        ctx = self.encode(tokens, length)
        return self.state(obs, ctx), self.logz(ctx)


@dataclasses.dataclass(frozen=True)
class SpanPolicy(NetPolicy):
    """See the module docstring. Sizes are static fields (hashable; a static jit argument)."""

    max_len: int = 20
    n_nt: int = 30
    vocab: int = 10000
    dim: int = 64
    heads: int = 4
    enc_layers: int = 1

    def __post_init__(self):
        super().__post_init__()
        if int(self.max_len) < 2:
            raise ValueError(f"SpanPolicy: max_len must be >= 2, got {self.max_len}")

    @classmethod
    def small(cls, max_len: int, n_nt: int, vocab: int) -> "SpanPolicy":
        """CPU runs and tests: d = 64, 4 heads, 1 sentence-encoder layer."""
        return cls(max_len, n_nt, vocab, dim=64, heads=4, enc_layers=1)

    @property
    def layers(self) -> int:
        """Layers over the roots: none (for tables that list ``ParsePolicy.layers``)."""
        return 0

    @property
    def net(self) -> SpanNet:
        return SpanNet(self.max_len, self.n_nt, self.vocab, self.dim, self.heads, self.enc_layers)

    def flops_per_slot(self) -> float:
        """Forward FLOPs per root slot of one state (the sentence encoder, once per trajectory,
        left out as in ``ParsePolicy.flops_per_slot``): the root MLP's output layer (d^2), the
        merge MLP (4d * d + d * NT), the P_B head (d); the flow head is per state (~2d^2 / K)."""
        d = self.dim
        return 2.0 * (d * d + 4 * d * d + d * self.n_nt + d)
