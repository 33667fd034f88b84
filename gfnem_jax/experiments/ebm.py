"""Energy-based GFlowNets (EB-GFN, Zhang et al. 2022): an energy model and its sampler, trained jointly.

p_phi(x) ∝ exp(-E_phi(x)) on x in {0,1}^d (``gfnem_jax.models.energy``), the GFlowNet on the
``Bits`` environment with R(x) = exp(-E_phi(x) / T). Training is the library's one alternating
loop (``gfnem_jax.loop``, schedule "both": every step a sampler update, then a model update) with
the ``loop.LoopState`` slots

  sampler  gfn, gfn-cd: the GFlowNet's policy parameters (and log Z);
           pcd, gwg:    the persistent chains float32[B, d] (their "sampler" is MCMC);
  model    phi, the energy model's parameters.

One step t (key fold_in(run_key, t); the data batch drawn by ``batch_fn`` from the training set,
an argument of the compiled chunk):

  sampler  gfn, gfn-cd: the objective ``loss`` (``gfnem_jax.objectives``, TB by default) on
           B_f = B - B_b forward trajectories from P_F and B_b = round(back_ratio * B) backward
           trajectories from data x ~ P_B(. | x), rewards with the current phi (no gradient into
           phi); ``gfn_updates`` > 1 takes further updates on fresh batches (``after_sampler``).
           pcd / gwg: the chains move by ``mcmc_steps`` random-scan Gibbs (pcd) or
           Gibbs-with-gradients (gwg) steps. Written as an ``Update`` like every other side: the
           terms are 1/2 ||c - c'||^2 per chain (c' the moved chain), the optimizer SGD at rate 1,
           which lands exactly on c' (0/1 values: no rounding); its reported loss is 0.
  model    one Adam step on the contrastive loss
               mean_i E(x_i) - sum_j w_j E(x'_j)  + energy_l2 (mean_i E(x_i)^2 + sum_j w_j E(x'_j)^2)
           over the data batch x and the negatives x' (weights w_j = 1/B; the gradient with
           x' ~ p_phi is that of the NLL), negatives:
             gfn     B fresh samples of the sampler P_F (after this step's sampler update);
             gfn-cd  one back-and-forth MH step from each data point, k steps back
                     (``gfnem_jax.mcmc.back_and_forth``; k grows 1 -> d over k_warmup steps if > 0);
             pcd, gwg the persistent chains (after this step's moves).
Data parallelism: ``devices`` > 1 shards the batch over a mesh (``loop.make_mesh``); every
per-sample key is keyed by the sample's global index and every statistic is over the global batch,
so 1 and N devices give the same run to float tolerance.

``run`` writes config.json, metrics.jsonl (per logged chunk: gfn_loss, e_loss, accept for gfn-cd /
gwg, log_z for objectives with one, test_nll for d <= 20, the loop's loss / loss_last, wall_s),
energies.npy (float32[2^d], index = bits as binary, first bit most significant; d <= 20), test.npy
(uint8[n, d]), summary.json (test_nll exact for d <= 20, sampler_tv), heatmaps.png (2-D data) and
checkpoint/step_N (the ``loop.LoopState``; ``gfnem_jax.run_dir``'s checkpoint policy and exact
resume).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import distributed as D
from gfnem_jax import loop, mcmc, objectives, run_dir
from gfnem_jax.config import setting
from gfnem_jax.data import toy2d
from gfnem_jax.envs.bits import Bits, BitsState
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.models import energy as em
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.optim import OptimConfig, policy_optimizer
from gfnem_jax.sampling import Exploration, forward_rollout

METHODS = ("gfn", "gfn-cd", "pcd", "gwg")
GFN_METHODS = ("gfn", "gfn-cd")
# objectives that accept backward trajectories from data in their batch (any behaviour policy)
BALANCE = ("tb", "db", "subtb", "logvar", "fm")
PARAMS_TAG = 0x7FFFFFFF  # initial parameters and chains come from fold_in(run_key, PARAMS_TAG)


@dataclasses.dataclass(frozen=True)
class EBMSettings(run_dir.CheckpointSettings):
    data: str = setting("2spirals", f"a 2-D density ({', '.join(toy2d.NAMES)}) or a .npy of {{0,1}} vectors")
    bits: int = setting(8, "bits per coordinate for 2-D densities (d = 2 bits)", min=1, max=16)
    n_train: int = setting(50000, "training points drawn from a 2-D density", min=1)
    n_test: int = setting(10000, "held-out points drawn from a 2-D density", min=1)
    test_fraction: float = setting(0.1, "held-out fraction of a .npy data set", gt=0, lt=1)
    method: str = setting("gfn-cd", "how negatives are drawn: gfn-cd (one back-and-forth MH step "
                          "from each data point, EB-GFN's method), gfn (the sampler's own samples; "
                          "unstable here, worse than a uniform model on some seeds), pcd or gwg",
                          choices=METHODS)
    loss: str = setting("tb", "gfn / gfn-cd: the GFlowNet objective (balance objectives take the "
                        "backward trajectories from data; the others need back_ratio 0)",
                        choices=tuple(sorted(objectives.OBJECTIVES)))
    lam: float = setting(0.9, "SubTB lambda", gt=0)
    alpha: float = setting(0.5, "alpha of renyi / tsallis / alpha_kl")
    steps: int = setting(5000, "training steps", min=1)
    seed: int = setting(0, "random seed (data, initialisation, sampling)", min=0)
    batch_size: int = setting(128, "data points (and negatives) per step, global over all devices", min=2)
    lr: float = setting(1e-3, "Adam learning rate of the energy model", gt=0)
    lr_gfn: float = setting(1e-3, "Adam learning rate of the GFlowNet policy", gt=0)
    lr_logz: float = setting(0.1, "Adam learning rate of log Z (EB-GFN uses 1; it diverged here with method gfn)", gt=0)
    back_ratio: float = setting(0.5, "fraction of the sampler batch that are backward trajectories from data", min=0, max=1)
    k: int = setting(4, "gfn-cd: steps back in the back-and-forth MH move (capped at d)", min=1)
    k_warmup: int = setting(0, "gfn-cd: if > 0, k grows linearly from 1 to d over this many steps", min=0)
    temperature: float = setting(1.0, "reward temperature T: R = exp(-E / T)", gt=0)
    energy_l2: float = setting(0.01, "weight alpha of the energy penalty alpha (mean E(data)^2 + mean E(neg)^2)", min=0)
    gfn_updates: int = setting(1, "gfn / gfn-cd: sampler updates (fresh batches) per energy update", min=1)
    mcmc_steps: int = setting(20, "pcd / gwg: sampler steps per update on the persistent chains", min=1)
    energy_hidden: int = setting(256, "width of the energy MLP", min=1)
    energy_layers: int = setting(3, "hidden layers of the energy MLP", min=1)
    gfn_hidden: int = setting(256, "width of the GFlowNet MLP", min=1)
    gfn_layers: int = setting(2, "hidden layers of the GFlowNet MLP", min=1)
    n_eval_samples: int = setting(20000, "samples drawn for the heat maps (and at most this many for MMD)", min=2)
    log_every: int = setting(500, "steps between logged rows (exact test NLL for d <= 20)", min=1)
    devices: int = setting(1, "split each batch over this many devices (shard_map data parallelism)", min=1)

    def check(self):
        if self.back_ratio == 1.0 and self.method == "gfn":
            raise ValueError("back_ratio must be < 1 with method gfn (its negatives are the forward batch)")
        D.check_devices(self.devices, self.batch_size)
        if self.method not in GFN_METHODS:
            return
        b_f, b_b = self.sampler_sizes()
        if b_f % self.devices or b_b % self.devices:
            raise ValueError(f"batch_size {self.batch_size} with back_ratio {self.back_ratio} gives "
                             f"{b_f} forward and {b_b} backward trajectories; both must be divisible "
                             f"by devices {self.devices}")
        obj = self.objective()
        if obj.name not in BALANCE and b_b > 0:
            raise ValueError(f"back_ratio must be 0 with loss {obj.name} (it trains on trajectories "
                             f"from P_F only; the balance objectives {', '.join(BALANCE)} also take "
                             f"backward trajectories from the training set), got {self.back_ratio}")
        obj.check_sampling(Exploration(), batch_size=self.batch_size)

    def sampler_sizes(self):
        """(B_f forward, B_b backward) trajectories per sampler update (gfn, gfn-cd)."""
        b_b = int(round(self.back_ratio * self.batch_size))
        return self.batch_size - b_b, b_b

    def objective(self) -> objectives.Objective:
        return objectives.get(self.loss, lam=self.lam, alpha=self.alpha)


@dataclasses.dataclass(frozen=True)
class EBM:
    """The static parts: environment (with its energy model), the GFlowNet, the settings."""

    env: Bits
    model: em.EnergyModel
    gfn: GFlowNet
    settings: EBMSettings

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

    def sampler_tx(self):
        """The sampler slot's optimizer: Adam (policy / log Z) for gfn and gfn-cd; SGD at rate 1
        for the chains of pcd and gwg (see the module docstring)."""
        if self.gfn_based:
            return self.gfn_tx(self.gfn.init(jax.random.PRNGKey(0)))
        return optax.sgd(1.0)

    def phi_tx(self):
        return optax.adam(self.settings.lr)


def build(settings: EBMSettings, d: int) -> EBM:
    model = em.EnergyModel(d, settings.energy_hidden, settings.energy_layers)
    env = Bits(d, energy=model, temperature=settings.temperature)
    policy = MLPPolicy(env.n_actions, env.n_bwd_actions, settings.gfn_hidden, settings.gfn_layers)
    return EBM(env, model, GFlowNet(env, policy, settings.objective(), Exploration()), settings)


def init_state(ebm: EBM, seed: int) -> loop.LoopState:
    """Step 0: sampler = the GFlowNet's parameters (gfn, gfn-cd) or the chains (pcd, gwg),
    model = phi; run key PRNGKey(seed)."""
    key = jax.random.PRNGKey(seed)
    kg, ke, kc = jax.random.split(jax.random.fold_in(key, PARAMS_TAG), 3)
    env = ebm.env
    phi = ebm.model.init(ke)
    if ebm.gfn_based:
        gp = ebm.policy.init(kg, env.observe(env.init()))
        # log Z starts at the initial energy's value log sum_x exp(-E(x)/T) ~ d log 2 - mean E / T
        xs = jax.random.bernoulli(jax.random.fold_in(kc, 1), 0.5, (256, env.d)).astype(jnp.float32)
        lz0 = env.d * jnp.log(2.0) - jnp.mean(em.energies(ebm.model, phi, xs)) / env.temperature
        sampler = jax.tree.map(lambda m, p: jnp.full_like(p, lz0) if m else p,
                               ebm.policy.log_z_mask(gp), gp)
    else:
        sampler = jax.random.bernoulli(kc, 0.5, (ebm.settings.batch_size, env.d)).astype(jnp.float32)
    return loop.init_state(sampler, ebm.sampler_tx(), phi, ebm.phi_tx(), key)


def current_k(ebm: EBM, step) -> jax.Array:
    s, d = ebm.settings, ebm.d
    if s.k_warmup > 0:
        return jnp.clip(1 + (d - 1) * step // s.k_warmup, 1, d).astype(jnp.int32)
    return jnp.asarray(min(s.k, d), jnp.int32)


def batch_fn(ebm: EBM):
    """``batch_fn(data, key, i)`` for ``loop.make_chunk``: rows drawn uniformly (with
    replacement) from the training set ``data`` float32[N, d]: "x" [B, d] (the model's data batch,
    gfn-cd's chain starts), "back" [B_b, d] (the data ends of the sampler's backward
    trajectories) and "back_more" [B_b, gfn_updates - 1, d] (those of its further updates)."""
    s = ebm.settings
    B = s.batch_size
    _, B_b = s.sampler_sizes() if ebm.gfn_based else (B, 0)

    def draw(data, key, i):
        kx, kb, km = jax.random.split(key, 3)
        pick = lambda k, shape: data[jax.random.randint(k, shape, 0, data.shape[0])]
        out = {"x": pick(kx, (B,))}
        if B_b:
            out["back"] = pick(kb, (B_b,))
            if s.gfn_updates > 1:
                out["back_more"] = pick(km, (B_b, s.gfn_updates - 1))
        return out

    return draw


def sampler_update(ebm: EBM) -> loop.Update:
    """The sampler side (see the module docstring): the GFlowNet objective on forward plus
    backward trajectories (gfn, gfn-cd), or the chains' MCMC moves (pcd, gwg)."""
    s, env, gfn = ebm.settings, ebm.env, ebm.gfn
    if ebm.gfn_based:
        B_f, B_b = s.sampler_sizes()

        def prepare(params, phi, batch, key, shard):
            parts = []
            if B_f:
                b = B_f // shard.count
                parts.append(gfn.rollout(params, jax.random.fold_in(key, 0), b, env.log_reward, phi,
                                         None, shard.offset(b)))
            if B_b:
                xb = batch["back"]
                b = xb.shape[0]
                parts.append(gfn.sample_backward(params, jax.random.fold_in(key, 1),
                                                 BitsState(xb.astype(jnp.int32)), env.log_reward,
                                                 phi, None, shard.offset(b)))
            if len(parts) == 1:
                return parts[0]
            return jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), *parts)

        def terms(params, phi, traj):
            return gfn.terms(params, traj, phi)

        def reduce(q, traj):
            m = {"log_z": jnp.mean(q.log_z)} if gfn.objective.needs_log_z else {}
            return gfn.value(q, traj), m

        return loop.Update(prepare, terms, reduce, ebm.sampler_tx())

    B = s.batch_size

    def c_prepare(chains, phi, batch, key, shard):
        b = B // shard.count
        rows = shard.offset(b) + jnp.arange(b)
        x = chains[rows]
        if s.method == "pcd":
            return {"rows": rows, "new": mcmc.gibbs(ebm.model.energy, phi, key, x, s.mcmc_steps,
                                                    index_offset=shard.offset(b))}
        new, acc = mcmc.gwg_chains(ebm.model.energy, phi, key, x, s.mcmc_steps, shard.offset(b))
        return {"rows": rows, "new": new, "acc": acc}

    def c_terms(chains, phi, aux):
        return 0.5 * jnp.sum((chains[aux["rows"]] - aux["new"]) ** 2, axis=1)

    def c_reduce(q, aux):
        total = jnp.sum(q)  # gradient c - c' per chain; value 0
        m = {"accept": jnp.mean(aux["acc"])} if "acc" in aux else {}
        return total - jax.lax.stop_gradient(total), m

    return loop.Update(c_prepare, c_terms, c_reduce, ebm.sampler_tx())


def model_update(ebm: EBM) -> loop.Update:
    """The model side: one step on the contrastive loss (module docstring). aux holds the data
    "x", the negatives "neg" and their weights "w" (ones when sampled; ``model_terms`` and
    ``model_reduce`` with w = p_phi over every state give the exact NLL's gradient)."""
    s, env = ebm.settings, ebm.env

    def prepare(phi, other, batch, key, shard):
        x = batch["x"]
        b = x.shape[0]
        off = shard.offset(b)
        aux = {"x": x, "w": jnp.ones((b,), jnp.float32)}
        if s.method == "gfn":
            tr = forward_rollout(env, ebm.policy, other, key, b, lambda p, c, st: jnp.zeros(()),
                                 None, None, Exploration(), off, sampling_pass=True)
            aux["neg"] = tr.terminal.bits.astype(jnp.float32)
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
    return {"pos": em.energies(ebm.model, phi, x), "neg": em.energies(ebm.model, phi, neg)}


def model_reduce(ebm: EBM, q, aux):
    """(contrastive loss over the global batch, metrics): see the module docstring."""
    w = aux["w"] / jnp.sum(aux["w"])
    loss = jnp.mean(q["pos"]) - jnp.sum(w * q["neg"])
    if ebm.settings.energy_l2 > 0:
        loss = loss + ebm.settings.energy_l2 * (jnp.mean(q["pos"] ** 2) + jnp.sum(w * q["neg"] ** 2))
    m = {"accept": jnp.mean(aux["acc"])} if "acc" in aux else {}
    return loss, m


def make_step(ebm: EBM, mesh=None):
    """``step(state, batch, key) -> (state, metrics)``: ``loop.make_step`` with the two sides,
    schedule "both", further sampler updates (gfn_updates > 1) as its ``after_sampler`` hook.
    Metrics: loss (the sampler's; 0 for pcd / gwg), m_loss (the contrastive loss before the
    step), accept (gfn-cd: MH acceptance; gwg: GwG acceptance), log_z (objectives with one)."""
    s = ebm.settings
    s_upd = sampler_update(ebm)
    after = None
    if ebm.gfn_based and s.gfn_updates > 1:
        def after(st, batch, key, shard):
            def body(u, st):
                b = {"back": batch["back_more"][:, u - 1]} if "back_more" in batch else {}
                p, o, _, _ = loop.apply_update(s_upd, st.sampler, st.sampler_opt, st.model, b,
                                               jax.random.fold_in(key, u), shard)
                return st._replace(sampler=p, sampler_opt=o)
            return jax.lax.fori_loop(1, s.gfn_updates, body, st), {}
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
    contrastive loss (e_loss), accept and log_z where present."""
    names = {"loss": "gfn_loss", "m_loss": "e_loss", "accept": "accept", "log_z": "log_z"}
    return {v: float(np.mean(m[k])) for k, v in names.items() if k in m}


def load_data(s: EBMSettings):
    """(train uint8[N, d], test uint8[n, d], is_2d). Keys of the data: seed s.seed."""
    if s.data.endswith(".npy"):
        x = toy2d.load_npy(s.data)
        tr, te = toy2d.split(x, s.test_fraction, np.random.default_rng([s.seed, 1]))
        return tr, te, False
    if s.data not in toy2d.NAMES:
        raise ValueError(f"data must be one of {', '.join(toy2d.NAMES)} or a path ending in .npy, got {s.data!r}")
    rng = np.random.default_rng([s.seed, 0])
    return (toy2d.make_data(s.data, s.bits, s.n_train, rng),
            toy2d.make_data(s.data, s.bits, s.n_test, rng), True)


def run(settings: EBMSettings, out: str, progress: bool = True, resume: bool = False) -> dict:
    """Train and write the run files into ``out`` (see the module docstring). Returns the summary.

    The loop state is checkpointed under out/checkpoint (``run_dir.Checkpoints``); with ``resume``
    a run continues from its latest checkpoint (step 0 if none) up to ``settings.steps``, identical
    to a run never stopped. With several processes (``gfnem_jax.distributed``) only process 0
    writes the run files.
    """
    from gfnem_jax.experiments import ebm_eval

    settings.validate()
    train, test, is_2d = load_data(settings)
    d = train.shape[1]
    ebm = build(settings, d)
    cfg = {"task": "ebm", "d": d, **settings.to_dict()}
    if resume:
        run_dir.check_resume(cfg, out, defaults=type(settings).defaults())
    st, ck = run_dir.restore_latest(out, init_state(ebm, settings.seed), resume)
    done = int(st.step)
    run_dir.check_steps(settings.steps, done, out)
    run_dir.write_config(out, cfg)
    primary = D.is_primary()
    if primary:
        np.save(os.path.join(out, "test.npy"), test.astype(np.uint8))
    chunk = run_dir.chunk_size(settings.steps, done, settings.log_every)
    mesh = loop.make_mesh(settings.devices)
    compiled = make_chunk(ebm, chunk, mesh)
    train_all = D.to_global(jnp.asarray(train, jnp.float32), mesh)
    exact = d <= em.MAX_EXACT_D
    cks = run_dir.Checkpoints(out, settings, last=done if ck else None)
    t0 = time.perf_counter()
    with run_dir.MetricsLog(out, run_dir.read_rows(out, run_dir.upto(done)) if ck else [],
                            tensorboard=settings.tensorboard) as log:
        st = loop.host_loop(st, lambda s, _: compiled(D.to_global(s, mesh), train_all),
                            settings.steps - done, chunk, summarize=summarize_chunk,
                            evaluate=(lambda s: {"test_nll": float(em.exact_nll(ebm.model, s.model,
                                                                                test))}) if exact else None,
                            on_log=log.write, progress=progress, desc=f"ebm/{settings.method}",
                            postfix=("e_loss", "gfn_loss", "test_nll"), wall_offset=log.wall_offset(),
                            **cks.loop_kwargs())
    cks.save(st)
    st = D.to_local(st)
    summary = ebm_eval.summarize(ebm, st.sampler, st.model, test,
                                 jax.random.fold_in(st.key, -2 & 0x7FFFFFFF),
                                 gfn_based=ebm.gfn_based, n_mmd=min(2000, settings.n_eval_samples))
    summary["train_s"] = round(time.perf_counter() - t0, 3)
    if not primary:
        return summary
    if exact:
        np.save(os.path.join(out, "energies.npy"), np.asarray(em.all_energies(ebm.model, st.model), np.float32))
    if is_2d and d <= 20:
        ebm_eval.heatmaps(ebm, st.sampler, st.model, train, jax.random.fold_in(st.key, 3),
                          os.path.join(out, "heatmaps.png"), gfn_based=ebm.gfn_based,
                          n=settings.n_eval_samples)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_run(run: str):
    """(settings, ebm, state) of a finished ebm run directory (its config.json and checkpoint);
    the state is a ``loop.LoopState`` (sampler: GFlowNet parameters or chains, model: phi)."""
    from gfnem_jax import checkpoint

    cfg = run_dir.load_config(run)
    if cfg.get("task") != "ebm":
        raise ValueError(f"run {run!r} is a {cfg.get('task', 'different')!r} run, not an ebm run")
    d = cfg.pop("d")
    cfg.pop("task")
    settings = EBMSettings.from_dict(cfg)  # the devices it trained on need not be here
    e = build(settings, d)
    ck = checkpoint.latest(run)
    if ck is None:
        raise ValueError(f"run {run!r} holds no checkpoint")
    return settings, e, checkpoint.restore(ck, init_state(e, settings.seed))


def sample_run(run_dir: str, n: int, seed: int = 0) -> np.ndarray:
    """uint8[n, d]: n samples of a finished run's model: its GFlowNet for gfn / gfn-cd; exact
    samples of p_phi (enumeration) for pcd / gwg when d <= 20, else its persistent chains run
    on with Gibbs-with-gradients (1000 steps)."""
    from gfnem_jax.experiments import ebm_eval

    settings, e, st = load_run(run_dir)
    key = jax.random.PRNGKey(seed)
    if e.gfn_based:
        return ebm_eval.sample_gfn(e, st.sampler, st.model, key, n)
    if e.d <= em.MAX_EXACT_D:
        return ebm_eval.sample_exact(e.model, st.model, key, n)
    x = jnp.tile(st.sampler, (n // st.sampler.shape[0] + 1, 1))[:n]
    return np.asarray(mcmc.gwg(e.model.energy, st.model, key, x, 1000)[0], np.uint8)
