"""Energy-based GFlowNets (EB-GFN, Zhang et al. 2022): an energy model and its sampler, one loop.

p_phi(x) ∝ exp(-E_phi(x)) on x in {0,1}^d (``gfnem_jax.models.energy``), the GFlowNet on the
``Bits`` environment with R(x) = exp(-E_phi(x) / T). Training is the library's one alternating
step (``gfnem_jax.loop``, schedule "both": every step a sampler side, then a model update) with the
``loop.LoopState`` slots

  sampler  gfn, gfn-cd: the GFlowNet's policy parameters (and log Z);
           pcd, gwg:    the persistent chains float32[B, d] (their "sampler" is MCMC);
  model    phi, the energy model's parameters.

One step t (key fold_in(run_key, t); the data batch drawn by ``batch_fn`` from the training set,
an argument of the compiled chunk):

  sampler  gfn, gfn-cd: an ``Update``, the objective (``gfnem_jax.objectives``, TB by default) of
           ``gflownet.sampler_update`` on B_f = B - B_b forward trajectories from P_F and
           B_b = round(back_ratio * B) backward trajectories from data x ~ P_B(. | x), rewards with
           the current phi (no gradient into phi); n = ``sampler_updates(settings)`` > 1 takes
           n - 1 further updates on fresh batches (``after_sampler``); 1 by default. With
           unweighted negatives (neg_weights "none") gfn takes 4: with 1 its sampler lags the
           energy (exact TV(P_F, p_phi) 0.5-0.96 at d = 6 and 8) and the energy, pushed up only
           where the stale sampler goes, grows spurious modes; 4 still lag on 2spirals at d = 16.
           The importance-weighted negatives (the default) remove the lag's bias instead
           (docs/experiments/ebm.rst, "Why plain gfn diverged").
           pcd / gwg: a ``loop.Move``: the chains move by ``mcmc_steps`` random-scan Gibbs (pcd)
           or Gibbs-with-gradients (gwg) steps; no loss (logged as 0), no optimizer.
  model    one Adam step on the contrastive loss
               mean_i E(x_i) - sum_j w_j E(x'_j)  + energy_l2 (mean_i E(x_i)^2 + sum_j w_j E(x'_j)^2)
           over the data batch x and the negatives x' (weights w_j = 1/B; the gradient with
           x' ~ p_phi is that of the NLL), negatives:
             gfn     B fresh samples of the sampler P_F (after this step's sampler update), with
                     neg_weights "is" (the default) weighted w_j = softmax_j(-E(x'_j) +
                     log P_B(tau_j | x'_j) - log P_F(tau_j)): self-normalised importance weights
                     towards p_phi, so a sampler that lags the energy biases its gradient only
                     where it misses p_phi's mass entirely ("none": w_j = 1/B);
             gfn-cd  one back-and-forth MH step from each data point, k steps back
                     (``gfnem_jax.mcmc.back_and_forth``; k = 0, the default: d, the whole
                     trajectory; k grows 1 -> d over k_warmup steps if > 0);
             pcd, gwg the persistent chains (after this step's moves).
Data parallelism: a mesh (``loop.make_mesh``) shards the batch; every per-sample key is keyed by
the sample's global index and every statistic is over the global batch, so 1 and N devices give
the same run to float tolerance.

``settings`` below is any object with the fields of ``gfnem_jax.experiments.ebm.EBMSettings``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import gflownet, loop, mcmc
from gfnem_jax.envs.bits import Bits, BitsState
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.models import energy
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.optim import OptimConfig, policy_optimizer
from gfnem_jax.sampling import Exploration, forward_rollout

METHODS = ("gfn", "gfn-cd", "pcd", "gwg")
# sampler updates per energy update for gfn_updates = 0: 1, but 4 for gfn with unweighted
# negatives (neg_weights "none"), whose energy gradient follows a lagging sampler
UNWEIGHTED_GFN_UPDATES = 4
GFN_METHODS = ("gfn", "gfn-cd")
PARAMS_TAG = 0x7FFFFFFF  # initial parameters and chains come from fold_in(run_key, PARAMS_TAG)
# The chains' optimizer slot: leaf-less, with the structure of the SGD state earlier versions
# moved the chains with (optax.sgd(1.0).init), so that their checkpoints restore; never read.
CHAINS_OPT_SLOT = (optax.EmptyState(), optax.EmptyState())


@dataclasses.dataclass(frozen=True)
class EBM:
    """The static parts: environment (with its energy model), the GFlowNet, the settings."""

    env: Bits
    model: energy.EnergyModel
    gfn: GFlowNet
    settings: Any

    @property
    def d(self) -> int:
        return self.env.d

    @property
    def policy(self) -> MLPPolicy:
        return self.gfn.policy

    @property
    def gfn_based(self) -> bool:
        return self.settings.method in GFN_METHODS

    def gfn_tx(self, params):
        s = self.settings
        return policy_optimizer(self.gfn, OptimConfig(s.lr_gfn, s.lr_logz), params)

    def phi_tx(self):
        return optax.adam(self.settings.lr)


def make(settings, d: int) -> EBM:
    """The bundle for data of dimension ``d``: an energy MLP, ``Bits(d)`` with R = exp(-E / T), an
    MLP policy and the settings' objective."""
    model = energy.EnergyModel(d, settings.energy_hidden, settings.energy_layers)
    env = Bits(d, energy=model, temperature=settings.temperature)
    policy = MLPPolicy(env.n_actions, env.n_bwd_actions, settings.gfn_hidden, settings.gfn_layers)
    return EBM(env, model, GFlowNet(env, policy, settings.objective(), Exploration()), settings)


def init_state(ebm: EBM, seed: int) -> loop.LoopState:
    """Step 0: sampler = the GFlowNet's parameters (gfn, gfn-cd) or the chains float32[B, d]
    (pcd, gwg; optimizer slot ``CHAINS_OPT_SLOT``), model = phi; run key PRNGKey(seed)."""
    key = jax.random.PRNGKey(seed)
    kg, ke, kc = jax.random.split(jax.random.fold_in(key, PARAMS_TAG), 3)
    env = ebm.env
    phi = ebm.model.init(ke)
    if not ebm.gfn_based:
        chains = jax.random.bernoulli(kc, 0.5, (ebm.settings.batch_size, env.d)).astype(jnp.float32)
        st = loop.init_state(chains, None, phi, ebm.phi_tx(), key)
        return st._replace(sampler_opt=CHAINS_OPT_SLOT)
    gp = ebm.policy.init(kg, env.observe(env.init()))
    # log Z starts at the initial energy's value log sum_x exp(-E(x)/T) ~ d log 2 - mean E / T
    xs = jax.random.bernoulli(jax.random.fold_in(kc, 1), 0.5, (256, env.d)).astype(jnp.float32)
    lz0 = env.d * jnp.log(2.0) - jnp.mean(energy.energies(ebm.model, phi, xs)) / env.temperature
    sampler = jax.tree.map(lambda m, p: jnp.full_like(p, lz0) if m else p,
                           ebm.policy.log_z_mask(gp), gp)
    return loop.init_state(sampler, ebm.gfn_tx(ebm.gfn.init(jax.random.PRNGKey(0))), phi,
                           ebm.phi_tx(), key)


def sampler_updates(settings) -> int:
    """The sampler updates per energy update: ``gfn_updates``, or for 0: 1, except
    ``UNWEIGHTED_GFN_UPDATES`` for gfn with neg_weights "none"."""
    if settings.gfn_updates:
        return settings.gfn_updates
    if settings.method == "gfn" and settings.neg_weights == "none":
        return UNWEIGHTED_GFN_UPDATES
    return 1


def current_k(ebm: EBM, step) -> jax.Array:
    """int32[]: gfn-cd's steps back at ``step`` (k_warmup > 0: 1 -> d linearly; else min(k, d),
    and d for k = 0)."""
    s, d = ebm.settings, ebm.d
    if s.k_warmup > 0:
        return jnp.clip(1 + (d - 1) * step // s.k_warmup, 1, d).astype(jnp.int32)
    return jnp.asarray(min(s.k or d, d), jnp.int32)


def batch_fn(ebm: EBM):
    """``batch_fn(data, key, i)`` for ``loop.make_chunk``: rows drawn uniformly (with
    replacement) from the training set ``data`` float32[N, d]: "x" [B, d] (the model's data batch,
    gfn-cd's chain starts), "back" [B_b, d] (the data ends of the sampler's backward
    trajectories) and "back_more" [B_b, n - 1, d] (those of its n - 1 further updates, n =
    ``sampler_updates``)."""
    s = ebm.settings
    B = s.batch_size
    _, B_b = s.sampler_sizes() if ebm.gfn_based else (B, 0)

    def draw(data, key, i):
        kx, kb, km = jax.random.split(key, 3)
        pick = lambda k, shape: data[jax.random.randint(k, shape, 0, data.shape[0])]
        out = {"x": pick(kx, (B,))}
        if B_b:
            out["back"] = pick(kb, (B_b,))
            if sampler_updates(s) > 1:
                out["back_more"] = pick(km, (B_b, sampler_updates(s) - 1))
        return out

    return draw


def sampler_update(ebm: EBM, tx) -> loop.Update:
    """gfn / gfn-cd's sampler side: ``gflownet.sampler_update`` on the B_f forward trajectories
    (key fold_in(key, 0)), with the B_b backward trajectories from the data batch's "back" [B_b, d]
    (key fold_in(key, 1), global indices as the forward ones) appended to its batch. Metrics:
    those of ``gflownet.sampler_update`` (log_z for objectives with one). With a target network
    (soft_q / munchausen, tau < 1; ``tx`` from ``loop.with_target``) both parts are evaluated
    under it as well."""
    env, gfn = ebm.env, ebm.gfn
    B_f, B_b = ebm.settings.sampler_sizes()
    fwd = gflownet.sampler_update(gfn, tx, B_f, env.log_reward)
    assert not gfn.one_pass  # its prepare would return the rollout's inputs, not trajectories

    def prepare(params, phi, batch, key, shard, target=None):
        parts = []
        if B_f:
            kw = {"target": target} if fwd.uses_target else {}
            parts.append(fwd.prepare(params, phi, batch, jax.random.fold_in(key, 0), shard, **kw))
        if B_b:
            xb = batch["back"]  # this shard's rows
            back = gfn.sample_backward(params, jax.random.fold_in(key, 1),
                                       BitsState(xb.astype(jnp.int32)), env.log_reward, phi, None,
                                       shard.offset(xb.shape[0]))
            if fwd.uses_target:
                back = back, jax.lax.stop_gradient(
                    gfn.evaluate(jax.lax.stop_gradient(target), back))
            parts.append(back)
        if len(parts) == 1:
            return parts[0]
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), *parts)

    return loop.Update(prepare, fwd.terms, fwd.reduce, tx, uses_target=fwd.uses_target)


def chain_move(ebm: EBM) -> loop.Move:
    """pcd / gwg's sampler side: each device moves its rows of the chains float32[B, d] by
    ``mcmc_steps`` Gibbs (pcd) or Gibbs-with-gradients (gwg) steps under the current phi (per-chain
    keys by global row); metrics: accept (gwg: the mean GwG acceptance over every chain)."""
    s = ebm.settings
    B = s.batch_size

    def move(chains, phi, batch, key, shard):
        b = B // shard.count
        off = shard.offset(b)
        x = chains[off + jnp.arange(b)]
        if s.method == "pcd":
            return shard.gather(mcmc.gibbs(ebm.model.energy, phi, key, x, s.mcmc_steps,
                                           index_offset=off)), {}
        new, acc = mcmc.gwg_chains(ebm.model.energy, phi, key, x, s.mcmc_steps, off)
        new, acc = shard.gather((new, acc))
        return new, {"accept": jnp.mean(acc)}

    return loop.Move(move)


def model_update(ebm: EBM) -> loop.Update:
    """The model side: one step on the contrastive loss (module docstring). aux holds the data
    "x" [b, d], the negatives "neg" [b', d] and their weights "w" [b'] (ones when sampled;
    ``model_terms`` and ``model_reduce`` with w = p_phi over every state give the exact NLL's
    gradient), and gfn-cd's MH acceptances "acc" [b]."""
    s, env = ebm.settings, ebm.env

    def prepare(phi, other, batch, key, shard):
        x = batch["x"]
        b = x.shape[0]
        off = shard.offset(b)
        aux = {"x": x, "w": jnp.ones((b,), jnp.float32)}
        if s.method == "gfn":
            weighted = s.neg_weights == "is"
            tr = forward_rollout(env, ebm.policy, other, key, b, lambda p, c, st: jnp.zeros(()),
                                 None, None, Exploration(), off, sampling_pass=not weighted)
            aux["neg"] = tr.terminal.bits.astype(jnp.float32)
            if weighted:  # log p_phi(x') + const - log P_F^T(x') by one backward path
                e_neg = energy.energies(ebm.model, phi, aux["neg"])
                aux["logw"] = jax.lax.stop_gradient(
                    -e_neg + jnp.sum(jnp.where(tr.mask, tr.log_pb - tr.log_pf, 0.0), axis=1))
        elif s.method == "gfn-cd":
            k = batch["k"] if "k" in batch else current_k(ebm, 0)
            xn, acc, _ = mcmc.back_and_forth(env, ebm.policy, other, key,
                                             BitsState(x.astype(jnp.int32)), k, env.log_reward,
                                             phi, None, off)
            aux.update(neg=xn.bits.astype(jnp.float32), acc=acc.astype(jnp.float32))
        else:
            aux["neg"] = other[off + jnp.arange(b)]  # the chains, moved by this step's sampler side
        return aux

    return loop.Update(prepare, lambda phi, other, aux: model_terms(ebm, phi, aux),
                       lambda q, aux: model_reduce(ebm, q, aux), ebm.phi_tx())


def model_terms(ebm: EBM, phi, aux):
    """Per-sample energies {"pos": E(x) [b], "neg": E(x') [b']} (no gradient into x, x')."""
    x, neg = jax.lax.stop_gradient((aux["x"], aux["neg"]))
    return {"pos": energy.energies(ebm.model, phi, x), "neg": energy.energies(ebm.model, phi, neg)}


def model_reduce(ebm: EBM, q, aux):
    """(contrastive loss over the global batch, metrics): see the module docstring."""
    w = jax.nn.softmax(aux["logw"]) if "logw" in aux else aux["w"] / jnp.sum(aux["w"])
    loss = jnp.mean(q["pos"]) - jnp.sum(w * q["neg"])
    if ebm.settings.energy_l2 > 0:
        loss = loss + ebm.settings.energy_l2 * (jnp.mean(q["pos"] ** 2) + jnp.sum(w * q["neg"] ** 2))
    m = {"accept": jnp.mean(aux["acc"])} if "acc" in aux else {}
    if "logw" in aux:  # the weights' effective sample size over B: 1 when P_F is p_phi
        m["neg_ess"] = 1.0 / (jnp.sum(w ** 2) * w.shape[0])
    return loss, m


def make_step(ebm: EBM, mesh=None):
    """``step(state, batch, key) -> (state, metrics)``: ``loop.make_step`` with the two sides,
    schedule "both", further sampler updates (``sampler_updates`` > 1) as its ``after_sampler`` hook.
    Metrics: loss (the sampler's; 0 for pcd / gwg), m_loss (the contrastive loss before the
    step), accept (gfn-cd: MH acceptance; gwg: GwG acceptance), log_z (objectives with one),
    neg_ess (gfn with weighted negatives: their effective sample size / B, low when it lags)."""
    s = ebm.settings
    if not ebm.gfn_based:
        return loop.make_step(chain_move(ebm), model_update(ebm), loop.Schedule("both"), mesh=mesh)
    s_upd = sampler_update(ebm, ebm.gfn_tx(ebm.gfn.init(jax.random.PRNGKey(0))))
    after = None
    n_upd = sampler_updates(s)
    if n_upd > 1:
        def after(st, batch, key, shard):
            def body(u, st):
                b = {"back": batch["back_more"][:, u - 1]} if "back_more" in batch else {}
                p, o, _, _ = loop.apply_update(s_upd, st.sampler, st.sampler_opt, st.model, b,
                                               jax.random.fold_in(key, u), shard)
                return st._replace(sampler=p, sampler_opt=o)
            return jax.lax.fori_loop(1, n_upd, body, st), {}
    step = loop.make_step(s_upd, model_update(ebm), loop.Schedule("both"), after_sampler=after,
                          mesh=mesh)
    if s.method != "gfn-cd" or s.k_warmup == 0:
        return step

    def with_k(st, batch, key):  # k of the step's schedule, one per data point (shardable)
        k = jnp.full((s.batch_size,), current_k(ebm, st.step), jnp.int32)
        return step(st, {**batch, "k": k}, key)

    return with_k


def make_chunk(ebm: EBM, n: int, mesh=None):
    """Jitted ``run_chunk(state, train float32[N, d]) -> (state, metrics[n])`` (``loop.make_chunk``
    with ``batch_fn``; the training data are an argument, one compilation per shape)."""
    return loop.make_chunk(make_step(ebm, mesh), n, batch_fn(ebm))


def summarize_chunk(m) -> dict:
    """A logged row's metrics from a chunk's: means of the sampler loss (gfn_loss), the
    contrastive loss (e_loss), accept, log_z and neg_ess (gfn's weighted negatives) where present."""
    names = {"loss": "gfn_loss", "m_loss": "e_loss", "accept": "accept", "log_z": "log_z",
             "neg_ess": "neg_ess"}
    return {v: float(np.mean(m[k])) for k, v in names.items() if k in m}
