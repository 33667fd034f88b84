"""GFlowNet-EM for grammar induction (Hu et al. 2023, section 5.1): `gfnem train grammar --method gflownet`.

Nothing here is a new algorithm: it configures the library's pieces for parse trees.
  environment   ``grammar.env.ParseTree(max_len, NT)``: bottom-up merges of adjacent roots.
  policy        ``grammar.policy.ParsePolicy``: a transformer over the current roots,
                conditioned on the sentence (encoded once per trajectory); log Z(x) an MLP of it.
                Setting policy=span: ``grammar.span_policy.SpanPolicy`` (roots from their span
                endpoints and label, only the candidate merges scored by a small MLP).
  engine        ``grammar.rollout.Buckets(n_buckets, pack)``: the training rollout and its
                differentiable pass look only at the root slots still live (K(t) = L - t); with
                pack > 0 the differentiable pass packs the states of all sentences by root count.
  flows         forward-looking: log F(s) = g_theta(x, s) + NN(s), g = the log-probs of the rules
                the forest has fixed (``ParseTree.partial_log_reward``), via ``GFlowNet.flow_offset``.
  E-step        ``em.em_updates``' sampler update: the objective (SubTB(1) by default) with tempered
                exploration on log R = log p_theta(x, z); sleep and local search from ``em.py``.
                The RL view (loss soft_q, munchausen, pcl) reads the forward logits as Q-values
                and V(s) = logsumexp of the legal ones (the engine's ``soft_values``), the
                forward-looking offset added to V; the target network is kept by the optimizer.
  M-step        ``em.em_updates``' expected NLL -mean log p_theta(x, z), z ~ P_F(. | x).
  schedule      ``loop.Schedule``: adaptive (an M-step when the EMA(0.9) of the E-step loss is under
                a threshold falling linearly, paper: 6 -> 3 for CFG, 7 -> 3.5 for NCFG) or fixed.
The loop state is ``loop.LoopState`` (sampler = policy parameters, model = grammar parameters).

Evaluation (``grammar.decode.make_gfn_decoder``), on the evaluation corpus:
  gfn_*_f1        F1 of one GFlowNet sample per sentence (line i: key fold_in(key, i)) and of the
                  best of K samples under p_theta(x, z) (``best_*``), sentence and corpus level;
  is_nll_per_token  -sum_i log p_hat(x_i) / tokens, p_hat(x) = (1/K) sum_k p(x, z_k) P_B(tau_k | z_k)
                  / P_F(tau_k | x) over K forward trajectories: an upper bound in expectation
                  (Jensen) on the NLL, the only one for an NCFG; reported with its K;
  exact_tv / exact_kl / exact_kl_reverse  the GFlowNet's terminal distribution against p(z | x)
                  over labelled trees, by dynamic programming over every state (no sampling), on
                  the short sentences that fit a state budget; bracket_tv over unlabelled
                  bracketings on sentences up to ``bracket_len`` words (``grammar.posterior``).
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import em, keys, loop
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar.env import ParseTree
from gfnem_jax.grammar.policy import ParsePolicy
from gfnem_jax.grammar.rollout import Buckets
from gfnem_jax.grammar.span_policy import SpanPolicy
from gfnem_jax.optim import OptimConfig, policy_optimizer


class Built(NamedTuple):
    env: ParseTree
    gfn: GFlowNet
    latent: em.LatentModel
    cfg: em.EMConfig


def thresholds(s, ncfg: bool):
    start = s.threshold_start or (7.0 if ncfg else 6.0)
    return start, s.threshold_end or start / 2


def build(s, model, vocab_size: int) -> Built:
    """The GFlowNet, the latent variable model and the EM settings of a run's settings ``s``
    (``grammar.settings.GrammarSettings``) and grammar ``model`` (Neural/TableGrammar)."""
    env = ParseTree(s.max_len, model.nt)
    if getattr(s, "policy", "transformer") == "span":
        policy = SpanPolicy(s.max_len, model.nt, vocab_size, dim=s.policy_dim,
                            heads=s.policy_heads, enc_layers=s.policy_enc_layers)
    else:
        policy = ParsePolicy(s.max_len, model.nt, vocab_size, dim=s.policy_dim,
                             layers=s.policy_layers, heads=s.policy_heads,
                             enc_layers=s.policy_enc_layers)
    objective = s.objective()
    rules = model.rule_log_probs

    def flow_offset(theta, cond, state):
        return env.partial_log_reward(rules(theta), cond, state)

    def flow_offset_path(theta, cond, states):
        return env.partial_log_reward_path(rules(theta), cond, states)

    fl = s.forward_looking
    gfn = GFlowNet(env, policy, objective, s.explore(),
                   engine=(Buckets(s.n_buckets or 1, s.pack, objective.soft_values, s.compact)
                           if (s.n_buckets or s.pack) else None),
                   flow_offset=flow_offset if fl else None,
                   flow_offset_path=flow_offset_path if fl else None, compact=s.compact)

    def log_joint(theta, x, z):
        return G.log_joint(rules(theta), x["tokens"], z)

    def sample(theta, key, n):
        words, trees, ok = jax.vmap(lambda k: G.sample(rules(theta), k, s.max_len))(
            jax.random.split(key, n))
        return {"tokens": words, "length": trees.length}, trees, ok

    start, end = thresholds(s, getattr(model, "ncfg", False))
    cfg = s.em_config(s.batch_size, s.batch_size, s.steps, threshold_start=start,
                      threshold_end=end, m_samples=s.m_samples, m_weights=s.m_weights)
    return Built(env, gfn, em.LatentModel(log_joint, sample), cfg)


def init_state(s, b: Built, theta, m_tx):
    """LoopState at step 0 and the policy's optimizer: grammar parameters ``theta`` in the model
    slot (``m_tx`` None keeps them fixed), policy parameters from fold_in(key, keys.POLICY)."""
    key = jax.random.PRNGKey(s.seed)
    cond = {"tokens": jnp.zeros((s.max_len,), jnp.int32), "length": jnp.asarray(s.max_len, jnp.int32)}
    params = b.gfn.init(keys.tagged(key, keys.POLICY), cond)
    drop_at = int(s.lr_drop_at * s.steps)  # one E-step update per step
    tx = policy_optimizer(b.gfn, OptimConfig(s.gfn_lr, s.gfn_lr_logz, s.grad_clip, s.gfn_lr_drop,
                                             drop_at), params)
    return loop.init_state(params, tx, theta, m_tx, key), tx


def make_step(b: Built, gfn_tx, m_tx, train_grammar: bool, mesh=None):
    """The one alternating step: E-step (+ sleep) and, when the grammar trains, the M-step;
    sharded over ``mesh`` (``loop.make_mesh``) when given."""
    e, m, after = em.em_updates(b.gfn, b.latent, b.cfg, gfn_tx, m_tx or gfn_tx, b.env.tree,
                                b.env.from_tree)
    if not train_grammar:
        return loop.make_step(e, None, loop.Schedule("sampler"), after_sampler=after, mesh=mesh)
    return loop.make_step(e, m, b.cfg.loop_schedule(), after_sampler=after, mesh=mesh)


def summarize(m) -> Dict[str, Any]:
    """The logged summary of a chunk's step metrics (numpy arrays [n]): M-steps, their mean loss
    and local-search acceptance, sleep updates, the last EMA and threshold."""
    out: Dict[str, Any] = {}
    if "m_step" in m:
        sel = np.asarray(m["m_step"], bool)
        out["m_steps"] = int(sel.sum())
        out["m_loss"] = float(np.asarray(m["m_loss"])[sel].mean()) if sel.any() else None
        if "ls_accept" in m:
            acc = np.asarray(m["ls_accept"])[sel]
            out["ls_accept"] = float(acc.mean()) if sel.any() else None
    if "sleep" in m:
        out["sleep_updates"] = int(np.asarray(m["sleep"]).sum())
    for name in ("ema", "threshold"):
        if name in m:
            out[name] = float(np.asarray(m[name])[-1])
    return out


def corpus_data(c) -> Dict[str, jax.Array]:
    return {"tokens": jnp.asarray(c.words), "length": jnp.asarray(c.lengths)}
