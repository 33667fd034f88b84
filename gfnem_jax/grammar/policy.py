"""Transformer policy over the current roots of a parse forest (``grammar.env.ParseTree``).

``ParsePolicy`` implements ``gfnem_jax.nets.policy.Policy``:

  encode_cond(params, cond) -> ctx   the sentence, ONCE per trajectory: token + position
      embeddings through ``enc_layers`` pre-LN transformer blocks (attention masked to the
      sentence's words) -> word encodings w float[L, d]; ctx = {"cum": prefix sums of w,
      float[L+1, d] (cum[i] = sum_{j<i} w_j), "pooled": the mean of w over the words, float[d]}.
  apply(params, obs, ctx) -> PolicyOutput   one state. Root q with span [i, j] and label A gets
      e_q = Dense([mean(w_i..w_j); w_i; w_j]) + Emb(A + 1) + Emb_width(j - i)  (A = -1: a word),
      then ``layers`` pre-LN blocks of self-attention over the live roots (keys masked to the
      r live slots) and an MLP (4d). Heads:
        fwd_logits[p * NT + A] = MLP([h_p; h_{p+1}])_A   (merge roots p, p+1 under A), [(L-1)*NT]
        bwd_logits[q] = Dense(h_q)                      (learned P_B: split root q), [L]
        log_flow = MLP(masked mean of h)                 (NN(s), see below)
  log_z(params, ctx) = MLP(ctx["pooled"])  (log Z(x) = log F(s_0 | x)); log_z_mask marks it.

Shrinking. ``apply`` accepts an observation with any number K <= L of root slots (the first K of
``env.observe``; legal when the state has at most K roots): its cost is O(K) per layer and the
outputs are padded back to the full action spaces (padding logits 0: those actions are illegal
whenever K >= r, and the library masks them). ``shrink(obs, K)`` slices; the bucketed rollout
and evaluation (``gfnem_jax.grammar.rollout``) use K = L - t at step t.

Forward-looking flows (issue 9: log F(s) = sum of log-probs of the rules built so far + NN(s)):
this network returns only NN(s). The task adds the partial log-joint of the forest in its flow
term, i.e. log F(s) = log_flow + g(theta, x, s) with g(s_0) = 0 and g(terminal) = log p(x, z),
computed by ``ParseTree.partial_log_reward(grammar, cond, state)`` (the rules whose every
argument is fixed by the forest: all built nodes for a PCFG; for an NCFG the built nodes whose
parent is built, and the root's rule at the end). The E-step adds it to every non-terminal
state's log_flow before the objective (the network then only learns the remainder).

Sizes: the paper's policy is ``ParsePolicy.paper(...)`` (6 layers, d = 512, 4 heads); tests and
CPU runs use ``ParsePolicy.small(...)``.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnem_jax.nets.policy import Policy, PolicyOutput
from gfnem_jax.startup import compiled_method

LOGZ_NAME = "logz_mlp"


class Block(nn.Module):
    """Pre-LN transformer block: x + MHA(LN x; mask) then x + MLP(LN x). x float[K, d]."""

    dim: int
    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x, key_mask):
        mask = key_mask[None, None, :]  # [heads=1, q=1, k] broadcast
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim,
                                                out_features=self.dim)(y, y, mask=mask)
        y = nn.LayerNorm()(x)
        y = nn.Dense(self.mlp_ratio * self.dim)(y)
        return x + nn.Dense(self.dim)(nn.gelu(y))


class _MLP(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out)(nn.gelu(nn.Dense(self.hidden)(x)))


def encode_words(net: nn.Module, tokens, length):
    """The sentence's word encodings float[L, d] (0 past the sentence) of a net with ``tok_emb``,
    ``pos_emb``, ``enc`` (transformer blocks masked to the words) and ``enc_ln``: token +
    position embeddings through the blocks, layer-normed (``ParseNet``, ``SpanNet``)."""
    L = net.max_len
    live = jnp.arange(L) < length
    x = net.tok_emb(jnp.clip(tokens, 0, net.vocab - 1)) + net.pos_emb(jnp.arange(L))
    for blk in net.enc:
        x = blk(x, live)
    return jnp.where(live[:, None], net.enc_ln(x), 0.0)


class ParseNet(nn.Module):
    max_len: int
    n_nt: int
    vocab: int
    dim: int
    layers: int
    heads: int
    enc_layers: int

    def setup(self):
        L, d = self.max_len, self.dim
        self.tok_emb = nn.Embed(self.vocab, d)
        self.pos_emb = nn.Embed(L, d)
        self.enc = [Block(d, self.heads) for _ in range(self.enc_layers)]
        self.enc_ln = nn.LayerNorm()
        self.span_proj = nn.Dense(d)
        self.label_emb = nn.Embed(self.n_nt + 1, d)
        self.width_emb = nn.Embed(L, d)
        self.blocks = [Block(d, self.heads) for _ in range(self.layers)]
        self.out_ln = nn.LayerNorm()
        self.fwd_head = _MLP(d, self.n_nt)
        self.bwd_head = nn.Dense(1)
        self.flow_head = _MLP(d, 1)
        self.logz_mlp = _MLP(d, 1)

    def encode(self, tokens, length):
        w = encode_words(self, tokens, length)
        cum = jnp.concatenate([jnp.zeros((1, self.dim), w.dtype), jnp.cumsum(w, axis=0)])
        pooled = cum[-1] / jnp.maximum(length, 1).astype(w.dtype)
        return {"cum": cum, "pooled": pooled}

    def state(self, obs, ctx):
        L, NT = self.max_len, self.n_nt
        cum = ctx["cum"]
        mask = obs["mask"]
        K = mask.shape[0]
        i = jnp.clip(obs["start"], 0, L - 1)
        j = jnp.clip(obs["end"], i, L - 1)
        width = (j - i + 1).astype(cum.dtype)
        mean = (cum[j + 1] - cum[i]) / width[:, None]
        first = cum[i + 1] - cum[i]
        last = cum[j + 1] - cum[j]
        e = self.span_proj(jnp.concatenate([mean, first, last], axis=-1))
        e = e + self.label_emb(jnp.clip(obs["label"] + 1, 0, NT)) + self.width_emb(j - i)
        h = e
        for blk in self.blocks:
            h = blk(h, mask)
        h = self.out_ln(h)
        pair = jnp.concatenate([h[:-1], h[1:]], axis=-1)  # [K-1, 2d]
        fwd = self.fwd_head(pair)  # [K-1, NT]
        fwd = jnp.pad(fwd, ((0, L - K), (0, 0))).reshape(-1)
        bwd = jnp.pad(self.bwd_head(h)[:, 0], (0, L - K))
        m = mask.astype(h.dtype)
        pooled = jnp.sum(h * m[:, None], 0) / jnp.maximum(jnp.sum(m), 1.0)
        return PolicyOutput(fwd, bwd, self.flow_head(pooled)[0])

    def logz(self, ctx):
        return self.logz_mlp(ctx["pooled"])[0]

    def __call__(self, tokens, length, obs):
        ctx = self.encode(tokens, length)
        return self.state(obs, ctx), self.logz(ctx)


class NetPolicy(Policy):
    """The ``Policy`` plumbing of a parse-forest policy whose flax ``net`` has ``encode(tokens,
    length) -> ctx``, ``state(obs, ctx) -> PolicyOutput`` and ``logz(ctx)`` (log Z(x) in the
    submodule ``LOGZ_NAME``): ``ParsePolicy``, ``SpanPolicy``."""

    SIZES = ("max_len", "n_nt", "vocab", "dim", "heads")  # fields that must be >= 1

    def __post_init__(self):
        name = type(self).__name__
        for f in self.SIZES:
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.dim % self.heads:
            raise ValueError(f"{name}: dim={self.dim} must be a multiple of heads={self.heads}")
        if int(self.enc_layers) < 0:
            raise ValueError(f"{name}: enc_layers must be >= 0, got {self.enc_layers}")

    @compiled_method
    def init(self, key, obs, cond=None):
        if cond is None:
            raise ValueError(f"{type(self).__name__}.init needs an example condition (a sentence)")
        return self.net.init(key, cond["tokens"], cond["length"], obs)

    def encode_cond(self, params, cond):
        return self.net.apply(params, cond["tokens"], cond["length"], method="encode")

    def apply(self, params, obs, ctx) -> PolicyOutput:
        return self.net.apply(params, obs, ctx, method="state")

    def log_z(self, params, ctx):
        return self.net.apply(params, ctx, method="logz")

    def log_z_mask(self, params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(k, "key", None) == LOGZ_NAME for k in path), params)


@dataclasses.dataclass(frozen=True)
class ParsePolicy(NetPolicy):
    """See the module docstring. Sizes are static fields (hashable; a static jit argument)."""

    max_len: int = 20
    n_nt: int = 30
    vocab: int = 10000
    dim: int = 512
    layers: int = 6
    heads: int = 4
    enc_layers: int = 2

    SIZES = NetPolicy.SIZES + ("layers",)

    @classmethod
    def paper(cls, max_len: int, n_nt: int, vocab: int) -> "ParsePolicy":
        """The paper's size: 6 layers, d = 512, 4 heads (2 sentence-encoder layers)."""
        return cls(max_len, n_nt, vocab, dim=512, layers=6, heads=4, enc_layers=2)

    @classmethod
    def small(cls, max_len: int, n_nt: int, vocab: int) -> "ParsePolicy":
        """Tests and CPU runs: 2 layers, d = 64, 4 heads, 1 encoder layer."""
        return cls(max_len, n_nt, vocab, dim=64, layers=2, heads=4, enc_layers=1)

    @property
    def net(self) -> ParseNet:
        return ParseNet(self.max_len, self.n_nt, self.vocab, self.dim, self.layers, self.heads,
                        self.enc_layers)

    def flops_per_slot(self) -> float:
        """Forward FLOPs of one root slot through the root transformer (dense layers only:
        2 * 12 d^2 per layer) plus the heads; attention scores add 4 K d per layer."""
        d = self.dim
        return 2.0 * (12 * d * d * self.layers + 3 * d * d + 2 * d * d + d * self.n_nt)


def shrink(obs, slots: int):
    """The first ``slots`` root slots of an observation (leaves [..., L] -> [..., slots])."""
    return jax.tree.map(lambda a: a[..., :slots], obs)

