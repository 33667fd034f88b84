"""Energy-based GFlowNets (EB-GFN, Zhang et al. 2022): an energy model and its sampler, trained jointly.

p_phi(x) ∝ exp(-E_phi(x)) on x in {0,1}^d (``gfnem_jax.models.energy``), the GFlowNet on the
``Bits`` environment with R(x) = exp(-E_phi(x) / T). One step of ``make_step`` (pure, jittable):

  sampler  (gfn, gfn-cd) trajectory balance on B_f = B - B_b forward trajectories from P_F and
           B_b = round(back_ratio * B) backward trajectories from data x ~ P_B(. | x), with the
           current phi (no gradient into phi):  L = mean_b (log Z + log P_F - log R - log P_B)^2.
  energy   one Adam step on cd_loss = mean E(data batch) - mean E(negatives), negatives:
             gfn     the forward batch's terminals (x' ~ P_F, before this step's sampler update);
             gfn-cd  one back-and-forth MH step from each data point, k steps back
                     (``gfnem_jax.mcmc.back_and_forth``; k grows 1 -> d over k_warmup steps if > 0);
             pcd     persistent chains, mcmc_steps random-scan Gibbs steps per update;
             gwg     persistent chains, mcmc_steps Gibbs-with-gradients steps per update.
The step key is fold_in(run_key, step). ``run`` writes config.json, metrics.jsonl, energies.npy
(float32[2^d], index = bits as binary, first bit most significant; d <= 20), test.npy
(uint8[n, d]), summary.json (test_nll exact for d <= 20, sampler_tv), heatmaps.png (2-D data) and
checkpoint/step_N (the EBMState; ``gfnem_jax.run_dir``'s checkpoint policy and exact resume).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import mcmc, run_dir
from gfnem_jax.config import setting
from gfnem_jax.data import toy2d
from gfnem_jax.envs.bits import Bits, BitsState
from gfnem_jax.models import energy as em
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.sampling import Exploration, backward_rollout, evaluate, forward_rollout

METHODS = ("gfn", "gfn-cd", "pcd", "gwg")


@dataclasses.dataclass(frozen=True)
class EBMSettings(run_dir.CheckpointSettings):
    data: str = setting("2spirals", f"a 2-D density ({', '.join(toy2d.NAMES)}) or a .npy of {{0,1}} vectors")
    bits: int = setting(8, "bits per coordinate for 2-D densities (d = 2 bits)", min=1, max=16)
    n_train: int = setting(50000, "training points drawn from a 2-D density", min=1)
    n_test: int = setting(10000, "held-out points drawn from a 2-D density", min=1)
    test_fraction: float = setting(0.1, "held-out fraction of a .npy data set", gt=0, lt=1)
    method: str = setting("gfn", "how negatives are drawn", choices=METHODS)
    steps: int = setting(5000, "training steps", min=1)
    seed: int = setting(0, "random seed (data, initialisation, sampling)", min=0)
    batch_size: int = setting(128, "data points (and negatives) per step", min=2)
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

    def check(self):
        if self.back_ratio == 1.0 and self.method == "gfn":
            raise ValueError("back_ratio must be < 1 with method gfn (its negatives are the forward batch)")


class EBMState(NamedTuple):
    gfn_params: Any
    gfn_opt: Any
    phi: Any
    phi_opt: Any
    chains: jax.Array  # float32[B, d] persistent chains (pcd, gwg)
    step: jax.Array  # int32[]
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class EBM:
    """The static parts: environment (with its energy model), policy, optimizers' settings."""

    env: Bits
    model: em.EnergyModel
    policy: MLPPolicy
    settings: EBMSettings

    @property
    def d(self) -> int:
        return self.env.d

    def gfn_tx(self, params):
        mask = self.policy.log_z_mask(params)
        labels = jax.tree.map(lambda m: "logz" if m else "policy", mask)
        s = self.settings
        return optax.multi_transform({"policy": optax.adam(s.lr_gfn), "logz": optax.adam(s.lr_logz)}, labels)

    def phi_tx(self):
        return optax.adam(self.settings.lr)


def build(settings: EBMSettings, d: int) -> EBM:
    model = em.EnergyModel(d, settings.energy_hidden, settings.energy_layers)
    env = Bits(d, energy=model, temperature=settings.temperature)
    policy = MLPPolicy(env.n_actions, env.n_bwd_actions, settings.gfn_hidden, settings.gfn_layers)
    return EBM(env, model, policy, settings)


def init_state(ebm: EBM, seed: int) -> EBMState:
    key = jax.random.PRNGKey(seed)
    kg, ke, kc = jax.random.split(jax.random.fold_in(key, 0x7FFFFFFF), 3)
    env = ebm.env
    gp = ebm.policy.init(kg, env.observe(env.init()))
    phi = ebm.model.init(ke)
    # log Z starts at the initial energy's value log sum_x exp(-E(x)/T) ~ d log 2 - mean E / T
    xs = jax.random.bernoulli(jax.random.fold_in(kc, 1), 0.5, (256, env.d)).astype(jnp.float32)
    lz0 = env.d * jnp.log(2.0) - jnp.mean(em.energies(ebm.model, phi, xs)) / env.temperature
    gp = jax.tree.map(lambda m, p: jnp.full_like(p, lz0) if m else p, ebm.policy.log_z_mask(gp), gp)
    chains = jax.random.bernoulli(kc, 0.5, (ebm.settings.batch_size, env.d)).astype(jnp.float32)
    return EBMState(gp, ebm.gfn_tx(gp).init(gp), phi, ebm.phi_tx().init(phi), chains,
                    jnp.zeros((), jnp.int32), key)


def tb_loss(ebm: EBM, params, traj) -> jax.Array:
    """Trajectory balance on given trajectories (log R = traj.log_reward), differentiable in params."""
    ev = evaluate(ebm.env, ebm.policy, params, traj)
    log_z = ebm.policy.log_z(params, None)
    r = log_z + jnp.sum(ev.log_pf, 1) - traj.log_reward - jnp.sum(ev.log_pb, 1)
    return jnp.mean(r ** 2)


def current_k(ebm: EBM, step) -> jax.Array:
    s, d = ebm.settings, ebm.d
    if s.k_warmup > 0:
        return jnp.clip(1 + (d - 1) * step // s.k_warmup, 1, d).astype(jnp.int32)
    return jnp.asarray(min(s.k, d), jnp.int32)


def make_step(ebm: EBM, train=None):
    """``step(state, key) -> (state, metrics)`` for ``ebm.settings.method`` (pure, jittable).

    train: float32[N, d] training vectors, closed over; None gives ``step(state, key, train)``
    instead (one compilation for every data set of the same shape). Metrics: gfn_loss (0 for
    pcd/gwg), e_loss (cd_loss before the step), accept (MH / GwG acceptance, else 0), log_z.
    """
    s, env, model = ebm.settings, ebm.env, ebm.model
    B = s.batch_size
    gfn_based = s.method in ("gfn", "gfn-cd")
    B_b = int(round(s.back_ratio * B)) if gfn_based else 0
    B_f = B - B_b
    gtx = ebm.gfn_tx(ebm.policy.init(jax.random.PRNGKey(0), env.observe(env.init())))
    ptx = ebm.phi_tx()

    def step_data(st: EBMState, key, train):
        kd, kf, kb, kn = jax.random.split(key, 4)
        x = train[jax.random.randint(kd, (B,), 0, train.shape[0])]
        phi_sg = jax.lax.stop_gradient(st.phi)
        zero = jnp.zeros((), jnp.float32)
        gp, gopt, gl, acc, chains = st.gfn_params, st.gfn_opt, zero, zero, st.chains
        if gfn_based:
            def sampler_update(i, carry):
                gp, gopt, _, _ = carry
                ki = jax.random.fold_in(kf, i)
                trajs = []
                if B_f:
                    trajs.append(forward_rollout(env, ebm.policy, gp, ki, B_f, env.log_reward, phi_sg,
                                                 None, Exploration(), sampling_pass=True))
                if B_b:
                    xb = train[jax.random.randint(jax.random.fold_in(kb, i), (B_b,), 0, train.shape[0])]
                    xb = jnp.where(i == 0, x[:B_b], xb)
                    trajs.append(backward_rollout(env, ebm.policy, gp, jax.random.fold_in(kb, i + 1),
                                                  BitsState(xb.astype(jnp.int32)), env.log_reward, phi_sg))

                def loss_fn(p):
                    return sum(tb_loss(ebm, p, t) * t.lengths.shape[0] for t in trajs) / B

                gl, g = jax.value_and_grad(loss_fn)(gp)
                upd, gopt = gtx.update(g, gopt, gp)
                fwd = trajs[0].terminal.bits.astype(jnp.float32) if B_f else jnp.zeros((0, env.d))
                return optax.apply_updates(gp, upd), gopt, gl, fwd

            init = (gp, gopt, zero, jnp.zeros((B_f, env.d), jnp.float32))
            gp, gopt, gl, fwd_x = sampler_update(0, init)
            if s.gfn_updates > 1:
                gp, gopt, gl, fwd_x = jax.lax.fori_loop(1, s.gfn_updates, sampler_update, (gp, gopt, gl, fwd_x))
            if s.method == "gfn":
                neg = fwd_x  # the last sampler batch's forward terminals
            else:
                xn, a, _ = mcmc.back_and_forth(env, ebm.policy, gp, kn, BitsState(x.astype(jnp.int32)),
                                               current_k(ebm, st.step), env.log_reward, phi_sg)
                neg, acc = xn.bits.astype(jnp.float32), jnp.mean(a.astype(jnp.float32))
        elif s.method == "pcd":
            chains = mcmc.gibbs(model.energy, phi_sg, kn, st.chains, s.mcmc_steps)
            neg = chains
        else:
            chains, acc = mcmc.gwg(model.energy, phi_sg, kn, st.chains, s.mcmc_steps)
            neg = chains
        def e_loss(p):
            loss = em.cd_loss(model, p, x, neg)
            if s.energy_l2 > 0:
                loss = loss + s.energy_l2 * (jnp.mean(em.energies(model, p, x) ** 2)
                                             + jnp.mean(em.energies(model, p, neg) ** 2))
            return loss

        el, g = jax.value_and_grad(e_loss)(st.phi)
        upd, popt = ptx.update(g, st.phi_opt, st.phi)
        phi = optax.apply_updates(st.phi, upd)
        metrics = {"gfn_loss": gl, "e_loss": el, "accept": acc, "log_z": ebm.policy.log_z(gp, None)}
        return EBMState(gp, gopt, phi, popt, chains, st.step + 1, st.key), metrics

    if train is None:
        return step_data
    return lambda st, key: step_data(st, key, train)


def make_chunk(step, n: int):
    """Jitted (state, *args) -> (state, metrics[n]): n steps in one lax.scan, step key
    fold_in(key, step); args (e.g. the training data) are passed to every step."""

    @jax.jit
    def run_chunk(st, *args):
        return jax.lax.scan(lambda c, _: step(c, jax.random.fold_in(c.key, c.step), *args), st, None,
                            length=n)

    return run_chunk


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

    The EBMState is checkpointed under out/checkpoint (``run_dir.Checkpoints``); with ``resume``
    a run continues from its latest checkpoint (step 0 if none) up to ``settings.steps``, identical
    to a run never stopped.
    """
    from gfnem_jax.experiments import ebm_eval
    from gfnem_jax.loop import host_loop

    settings.validate()
    train, test, is_2d = load_data(settings)
    d = train.shape[1]
    ebm = build(settings, d)
    cfg = {"task": "ebm", "d": d, **settings.to_dict()}
    if resume:
        run_dir.check_resume(cfg, out)
    st, ck = run_dir.restore_latest(out, init_state(ebm, settings.seed), resume)
    done = int(st.step)
    run_dir.check_steps(settings.steps, done, out)
    run_dir.write_config(out, cfg)
    np.save(os.path.join(out, "test.npy"), test.astype(np.uint8))
    chunk = run_dir.chunk_size(settings.steps, done, settings.log_every)
    run_chunk = make_chunk(make_step(ebm, jnp.asarray(train, jnp.float32)), chunk)
    exact = d <= em.MAX_EXACT_D
    cks = run_dir.Checkpoints(out, settings, last=done if ck else None)
    t0 = time.perf_counter()
    with run_dir.MetricsLog(out, run_dir.read_rows(out, run_dir.upto(done)) if ck else [],
                            tensorboard=settings.tensorboard) as log:
        st = host_loop(st, lambda s, _: run_chunk(s), settings.steps - done, chunk,
                       summarize=lambda m: {k: float(np.mean(v)) for k, v in m.items()},
                       evaluate=(lambda s: {"test_nll": float(em.exact_nll(ebm.model, s.phi,
                                                                           test))}) if exact else None,
                       on_log=log.write, progress=progress, desc=f"ebm/{settings.method}",
                       postfix=("e_loss", "gfn_loss", "test_nll"), wall_offset=log.wall_offset(),
                       **cks.loop_kwargs())
    cks.save(st)
    summary = ebm_eval.summarize(ebm, st.gfn_params, st.phi, test, jax.random.fold_in(st.key, -2 & 0x7FFFFFFF),
                                 gfn_based=settings.method in ("gfn", "gfn-cd"),
                                 n_mmd=min(2000, settings.n_eval_samples))
    summary["train_s"] = round(time.perf_counter() - t0, 3)
    if exact:
        np.save(os.path.join(out, "energies.npy"), np.asarray(em.all_energies(ebm.model, st.phi), np.float32))
    if is_2d and d <= 20:
        ebm_eval.heatmaps(ebm, st.gfn_params, st.phi, train, jax.random.fold_in(st.key, 3),
                          os.path.join(out, "heatmaps.png"), gfn_based=settings.method in ("gfn", "gfn-cd"),
                          n=settings.n_eval_samples)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_run(run: str):
    """(settings, ebm, state) of a finished ebm run directory (its config.json and checkpoint)."""
    from gfnem_jax import checkpoint

    cfg = run_dir.load_config(run)
    if cfg.get("task") != "ebm":
        raise ValueError(f"run {run!r} is a {cfg.get('task', 'different')!r} run, not an ebm run")
    d = cfg.pop("d")
    cfg.pop("task")
    settings = EBMSettings.from_dict(cfg)
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
    if settings.method in ("gfn", "gfn-cd"):
        return ebm_eval.sample_gfn(e, st.gfn_params, st.phi, key, n)
    if e.d <= em.MAX_EXACT_D:
        return ebm_eval.sample_exact(e.model, st.phi, key, n)
    x = jnp.tile(st.chains, (n // st.chains.shape[0] + 1, 1))[:n]
    return np.asarray(mcmc.gwg(e.model.energy, st.phi, key, x, 1000)[0], np.uint8)
