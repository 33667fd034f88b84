"""`gfnem train dvae`: a discrete VAE (G x G grid of K codes) trained by GFlowNet-EM, or a baseline.

Methods (one ``DVAESettings.method``):
  gflownet    GFlowNet-EM (Hu et al. 2023): the encoder q(z | x) is an autoregressive GFlowNet
              over the code grid (``models.dvae_encoder.DVAEEncoder``); the fixed schedule
              alternates ``e_steps`` E-steps (the objective ``loss``, TB by default, scaled by
              ``loss_scale`` = 1/16; sleep phase with probability ``sleep_prob``) and ``m_steps``
              M-steps (expected NLL -mean log p_theta(x, z), z ~ q(. | x)).
  greedy      the same, but the M-step uses the argmax code grid of q (sequential argmax).
  factorized  the same loop with q(z | x) = prod_i q(z_i | x) (logits blind to z_<i).
  vqvae       VQ-VAE with an EMA codebook (decay 0.999, commitment 0.25), same decoder.
The learned autoregressive prior (``prior`` = learned) is part of theta: trained by the M-step.
Every learning rate is multiplied by ``lr_drop`` after ``lr_drop_at`` of the run.

Data parallelism (``devices``, over every process of a ``gfnem_jax.distributed`` run): each step's
batch is split over a ``loop.make_mesh`` mesh; the E- and M-steps are ``loop.make_step`` on it
(global losses and gradients, per-sample keys by global index), the sleep phase draws the global
batch (x, z) ~ p_theta with the same key on every device and decodes only the device's rows, and
VQ-VAE averages its gradients over the devices and sums its EMA codebook statistics over them
(the codebook stays identical everywhere). 1 device is the single-device code, unchanged; N
devices give the same run to float tolerance. Only process 0 writes the run directory.

Run directory: config.json, metrics.jsonl (one row per chunk: step, loss, m_loss, test_bound =
-ELBO or the VQ bound on up to 256 held-out images, wall_s), checkpoint/step_N (the policy and the
resume of ``gfnem_jax.run_dir``), summary.json, reconstructions.png, prior_samples.png;
``evaluate_run`` adds eval.json (IS test NLL).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import checkpoint, em, loop, objectives, run_dir
from gfnem_jax import distributed as D
from gfnem_jax.config import setting
from gfnem_jax.data.images import load
from gfnem_jax.envs.sequence import SeqState, Sequence
from gfnem_jax.experiments import dvae_eval as ev
from gfnem_jax.models.dvae import PRIORS, DVAE, VQVAE
from gfnem_jax.models.dvae_encoder import DVAEEncoder

NAME = "dvae"
HELP = "discrete VAE (grid of K codes) with a GFlowNet encoder trained by GFlowNet-EM, or baselines"
METHODS = ("gflownet", "greedy", "factorized", "vqvae")
EVAL_SUBSET = 256


@dataclasses.dataclass(frozen=True)
class DVAESettings(run_dir.CheckpointSettings):
    method: str = setting("gflownet", "gflownet (GFlowNet-EM), greedy (M-step on the argmax code "
                          "grid), factorized (independent codes given x) or vqvae", choices=METHODS)
    codes: int = setting(8, "number of codes K", min=2)
    data: str = setting("digits", "digits (embedded 8x8) or a path: MNIST IDX directory or .npz")
    grid: int = setting(4, "the latent is a grid x grid array of codes", min=1)
    steps: int = setting(4000, "steps (E- and M-steps together)", min=1)
    batch_size: int = setting(128, "images per step", min=1)
    seed: int = setting(0, "seed of every key", min=0, max=2 ** 32 - 1)
    e_steps: int = setting(400, "E-steps per cycle", min=1)
    m_steps: int = setting(400, "M-steps per cycle", min=1)
    sleep_prob: float = setting(0.3, "probability of a sleep-phase update after an E-step", min=0, max=1)
    loss: str = setting("tb", "E-step objective", choices=tuple(sorted(objectives.OBJECTIVES)))
    lam: float = setting(0.9, "SubTB lambda", gt=0)
    loss_scale: float = setting(1 / 16, "E-step gradient multiplier (the paper scales TB by 1/16)", gt=0)
    logz: str = setting("scalar", "log Z: a scalar (the paper) or a function of x", choices=("scalar", "conditional"))
    prior: str = setting("uniform", "prior over codes", choices=PRIORS)
    lr: float = setting(1e-3, "Adam learning rate of the encoder", gt=0)
    lr_logz: float = setting(0.1, "Adam learning rate of log Z", gt=0)
    lr_m: float = setting(1e-3, "Adam learning rate of the decoder, embeddings and prior (and VQ-VAE)", gt=0)
    lr_drop: float = setting(0.1, "multiply every learning rate by this after lr_drop_at of the run", gt=0, max=1)
    lr_drop_at: float = setting(0.75, "fraction of the run after which learning rates drop", min=0, max=1)
    temperature: float = setting(1.0, "E-step exploration: softmax temperature", gt=0)
    epsilon: float = setting(0.05, "E-step exploration: uniform mixing", min=0, lt=1)
    channels: int = setting(32, "decoder / encoder CNN channels (the paper: 128)", min=1)
    embed_dim: int = setting(32, "code embedding size", min=1)
    hidden: int = setting(256, "encoder state-MLP width", min=1)
    n_test: int = setting(0, "held-out images used (0 = all)", min=0)
    log_every: int = setting(200, "steps per jitted chunk / metrics row", min=1)
    devices: int = setting(1, "split each batch over this many devices (of all processes)", min=1)
    plot: bool = setting(True, "write reconstructions.png and prior_samples.png", flag="--no-plot")

    def check(self):
        if self.devices > 1:
            D.check_devices(self.devices, self.batch_size)
        if self.method != "vqvae":
            objectives.get(self.loss, lam=self.lam).check_sampling(self.explore())
        if self.method == "vqvae" and self.prior != "uniform":
            raise ValueError("prior must be uniform for method vqvae (its bound assumes it)")

    def explore(self):
        from gfnem_jax.sampling import Exploration
        return Exploration(self.temperature, self.epsilon)


def _settings(cfg) -> DVAESettings:
    s = cfg if isinstance(cfg, DVAESettings) else DVAESettings.from_dict(dict(cfg))
    s.validate()
    return s


def load_data(s: DVAESettings):
    data = load(s.data)
    H, W = data.shape
    if not 1 <= s.grid <= min(H, W):
        raise ValueError(f"grid must be in [1, {min(H, W)}] for {H}x{W} images, got {s.grid}")
    if s.batch_size > len(data.train):
        raise ValueError(f"batch_size must be <= {len(data.train)} (training images), got {s.batch_size}")
    test = data.test[: s.n_test] if s.n_test else data.test
    return data.train, test


def _n_updates(s: DVAESettings, side: str) -> int:
    cyc = s.e_steps + s.m_steps
    full, rest = divmod(s.steps, cyc)
    if side == "e":
        return full * s.e_steps + min(rest, s.e_steps)
    return full * s.m_steps + max(0, rest - s.e_steps)


def _adam(lr: float, s: DVAESettings, n_updates: int):
    sched = optax.piecewise_constant_schedule(lr, {max(1, int(s.lr_drop_at * n_updates)): s.lr_drop})
    return optax.adam(sched)


def build(s: DVAESettings, shape):
    """(model, env, policy) for the settings and image shape (model is a VQVAE for vqvae)."""
    kw = dict(image_shape=tuple(shape), grid=s.grid, codes=s.codes, channels=s.channels,
              embed_dim=s.embed_dim)
    if s.method == "vqvae":
        return VQVAE(**kw), None, None
    env = Sequence(length=s.grid * s.grid, vocab=s.codes)
    policy = DVAEEncoder(grid=s.grid, codes=s.codes, channels=s.channels, hidden=s.hidden,
                         autoregressive=s.method != "factorized",
                         conditional_logz=s.logz == "conditional")
    return DVAE(prior=s.prior, **kw), env, policy


def z_to_state(z):
    return SeqState(z.astype(jnp.int32), jnp.asarray(z.shape[-1], jnp.int32))


def gflownet_updates(s: DVAESettings, model: DVAE, env, policy, params):
    """The only GFlowNet-specific wiring: (GFlowNet, E-update, M-update, sleep hook, gfn_tx, m_tx,
    EMConfig).

    E: the objective ``loss`` with exploration, gradients scaled by ``loss_scale``; log Z on its
    own learning rate. M: expected NLL on z ~ q (gflownet, factorized) or the argmax grid
    (greedy). Sleep: em's sleep phase (x, z) ~ p_theta, MLE of P_F.
    """
    from gfnem_jax.gflownet import GFlowNet
    from gfnem_jax.sampling import forward_rollout
    gfn = GFlowNet(env, policy, objectives.get(s.loss, lam=s.lam), s.explore())
    n_e = int(_n_updates(s, "e") * (1 + s.sleep_prob))
    labels = jax.tree.map(lambda m: "logz" if m else "policy", policy.log_z_mask(params))
    gfn_tx = optax.chain(optax.scale(s.loss_scale), optax.multi_transform(
        {"policy": _adam(s.lr, s, n_e), "logz": _adam(s.lr_logz, s, n_e)}, labels))
    m_tx = _adam(s.lr_m, s, _n_updates(s, "m"))
    cfg = em.EMConfig(e_batch=s.batch_size, m_batch=s.batch_size, schedule="fixed",
                      e_steps=s.e_steps, m_steps=s.m_steps, sleep_prob=0.0)
    lm = em.LatentModel(model.log_joint, model.sample)
    e_upd, m_upd, _ = em.em_updates(gfn, lm, cfg, gfn_tx, m_tx)
    if s.method == "greedy":
        def prepare(theta, p, batch, key, shard):
            x = batch["m"]
            tr = forward_rollout(env, policy, p, key, x.shape[0], lambda *_: jnp.zeros(()), None,
                                 x, ev.GREEDY, shard.offset(x.shape[0]), sampling_pass=True)
            return {"x": x, "z": jax.vmap(env.terminal_value)(tr.terminal)[:, None]}
        m_upd = m_upd._replace(prepare=prepare)
    return gfn, e_upd, m_upd, _sleep_hook(s, gfn, model, gfn_tx), gfn_tx, m_tx, cfg


def _sleep_hook(s: DVAESettings, gfn, model: DVAE, gfn_tx):
    """After each E-step, with probability sleep_prob: (x, z) ~ p_theta, one step on
    -mean log P_F(tau_z | x) (em's sleep phase). Computed every step and *selected* with
    jnp.where: a lax.cond here makes the whole step several times slower on XLA:CPU.
    On a mesh the sleep batch is global: every device draws it with the same key (the codes;
    ``DVAE.sample_rows``) and decodes and trains on its own rows (global sample indices)."""
    if s.sleep_prob <= 0:
        return None

    def prepare(params, theta, batch, key, shard):
        kx, kb = jax.random.split(key)
        n = s.batch_size
        b = n // shard.count
        if shard.axis is None:
            xs, zs = model.sample(theta, kx, n)
        else:
            xs, zs = model.sample_rows(theta, kx, n, shard.offset(b), b)
        return gfn.sample_backward(params, kb, jax.vmap(z_to_state)(zs), None, None, xs,
                                   shard.offset(b))

    def terms(params, theta, traj):
        return jnp.sum(gfn.evaluate(params, traj).log_pf, axis=1)

    upd = loop.Update(prepare, terms, lambda q, aux: (-jnp.mean(q), {}), gfn_tx)

    def after(st, batch, key, shard):
        kc, ks = jax.random.split(key)
        do = jax.random.bernoulli(kc, s.sleep_prob)
        p, o, _, _ = loop.apply_update(upd, st.sampler, st.sampler_opt, st.model, batch, ks, shard)
        pick = lambda n, old: jax.tree.map(lambda a, b: jnp.where(do, a, b), n, old)
        return st._replace(sampler=pick(p, st.sampler), sampler_opt=pick(o, st.sampler_opt)), {"sleep": do}

    return after


def _vq_step(vq: VQVAE, tx, mesh=None):
    """step(state, batch, key) of VQ-VAE (``loop.shard_step`` over ``mesh``): the loss and its
    gradient are means over the global batch (each device's mean over its equal shard, averaged
    over devices), the EMA codebook statistics are summed over every shard before the update."""
    def inner(st, batch, key, shard):
        x = batch["m"]
        def f(nets):
            l, aux = jax.vmap(lambda xi: vq.loss_one({**st.model, "nets": nets}, xi))(x)
            return jnp.mean(l), aux
        (loss, (h, z)), g = jax.value_and_grad(f, has_aux=True)(st.model["nets"])
        loss, g = shard.mean((loss, g))
        upd, opt = tx.update(g, st.model_opt, st.model["nets"])
        nets = optax.apply_updates(st.model["nets"], upd)
        stats = shard.sum(vq.ema_stats(h.reshape(-1, h.shape[-1]), z.reshape(-1)))
        cb = vq.ema_apply(st.model["codebook"], *stats)
        return st._replace(model={"nets": nets, "codebook": cb}, model_opt=opt,
                           step=st.step + 1), {"loss": loss, "m_loss": loss}
    return loop.shard_step(inner, mesh)


def make_runner(step, n: int, batch_fn, scan: bool = None):
    """run_chunk(state, data) -> (state, metrics[n]): ``loop.make_chunk`` (n steps in one
    lax.scan) on accelerators; on XLA:CPU, n calls of a jitted one-step chunk, compiled without
    any loop (the convolutions run about 20x slower inside a while loop there, even a one-trip
    scan: 0.29 s vs 0.015 s per M-step at batch 128, K = 4, measured).
    Same keys and results either way (step t uses fold_in(run_key, t)). With several processes
    the metrics come back as this process's replica (``distributed.to_local``)."""
    if scan is None:
        scan = jax.default_backend() != "cpu"
    if scan:
        return loop.make_chunk(step, n, batch_fn)
    one = loop.make_chunk(step, 1, batch_fn)

    def run_chunk(state, data=None):
        ms = []
        for _ in range(n):
            state, m = one(state, data)
            ms.append(D.to_local(m))
        return state, jax.tree.map(lambda *a: jnp.concatenate(a), *ms)

    return run_chunk


class Built:
    """Everything a run needs, rebuilt from settings: model, env, policy, step, initial state,
    and the mesh of ``devices`` (None for one) the steps are sharded over."""

    def __init__(self, s: DVAESettings, shape, example_x):
        self.s = s
        self.mesh = loop.make_mesh(s.devices)
        self.model, self.env, self.policy = build(s, shape)
        key = jax.random.PRNGKey(s.seed)
        if s.method == "vqvae":
            tx = _adam(s.lr_m, s, s.steps)
            params = self.model.init(jax.random.fold_in(key, 1))
            self.state = loop.init_state(None, None, params, None, key)._replace(
                model_opt=tx.init(params["nets"]))
            self.step = _vq_step(self.model, tx, self.mesh)
            self.ecfg = em.EMConfig(e_batch=s.batch_size, m_batch=s.batch_size)
        else:
            params = self.policy.init(jax.random.fold_in(key, 0x7FFFFFFF),
                                      self.env.observe(self.env.init()), example_x)
            theta = self.model.init(jax.random.fold_in(key, 1))
            (self.gfn, e, m, after, gfn_tx, m_tx, self.ecfg) = gflownet_updates(
                s, self.model, self.env, self.policy, params)
            self.state = loop.init_state(params, gfn_tx, theta, m_tx, key)
            # the fixed schedule is driven from the host (``chunks``): one compiled E-chunk and
            # one M-chunk; a lax.cond between them inside one step costs 10x on XLA:CPU.
            self.e_step = loop.make_step(e, None, loop.Schedule("sampler"), after_sampler=after,
                                         mesh=self.mesh)
            self.step = loop.make_step(None, m, loop.Schedule("model"), mesh=self.mesh)

    def chunks(self, n: int, n_train: int):
        """run_chunk(state, data) of n steps: E- or M-steps by the fixed schedule at state.step
        (n divides e_steps and m_steps, so a chunk never straddles a phase). The state is made
        global over the mesh first (``distributed.to_global``; a no-op in one process); ``data``
        must be global already."""
        bf = em.batch_fn(self.ecfg, n_train)
        m_chunk = make_runner(self.step, n, bf)
        e_chunk = None if self.s.method == "vqvae" else make_runner(self.e_step, n, bf)
        cyc = self.s.e_steps + self.s.m_steps

        def run_chunk(state, data):
            state = D.to_global(state, self.mesh)
            if e_chunk is None:
                return m_chunk(state, data)
            phase_e = int(D.to_local(state.step)) % cyc < self.s.e_steps
            return (e_chunk if phase_e else m_chunk)(state, data)

        return run_chunk

    def chunk_size(self, done: int) -> int:
        s = self.s
        g = s.steps if s.method == "vqvae" else math.gcd(s.e_steps, s.m_steps, s.steps)
        return run_dir.chunk_size(g, done, s.log_every)

    def test_bound(self, state, x, key):
        """float[N]: -ELBO (one sample) per image, or the VQ-VAE bound."""
        if self.s.method == "vqvae":
            return jax.vmap(lambda xi: self.model.nll_bound(state.model, xi))(x)
        return -ev.elbo_terms(self.env, self.policy, state.sampler, self.model.log_joint,
                              state.model, x, key)

    def codes(self, state, x, key):
        """int32[N, L] codes of images: z_enc for VQ-VAE, the argmax grid of q otherwise."""
        if self.s.method == "vqvae":
            return jax.vmap(lambda xi: self.model.codes_of(state.model, xi))(x)
        z, _ = ev.sample_codes(self.env, self.policy, state.sampler, key, x, 1, explore=ev.GREEDY)
        return z[:, 0]

    def decode_mean(self, state, z):
        return jax.vmap(lambda zz: jax.nn.sigmoid(self.model.logits(state.model, zz)))(z)

    def prior_codes(self, state, key, n):
        if self.s.method == "vqvae":
            return jax.random.randint(key, (n, self.model.length), 0, self.s.codes)
        return self.model.sample_prior(state.model, key, n)


def run(settings, out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Train as configured and write the run directory (module docstring). Returns
    {"final": last metrics row, "summary": summary dict, "state": LoopState}. resume: continue
    from the latest checkpoint in OUT (step 0 if none), identical to a run never stopped."""
    s = _settings(settings)
    train, test = load_data(s)
    cfg = s.to_dict()
    if resume:  # a setting added since the run was saved counts as its default
        run_dir.check_resume(cfg, out, defaults=DVAESettings.defaults())
    b = Built(s, train.shape[1:], jnp.asarray(train[0]))
    state, ck = run_dir.restore_latest(out, b.state, resume)
    done = int(state.step)
    run_dir.check_steps(s.steps, done, out)
    run_dir.write_config(out, cfg)
    chunk = b.chunk_size(done)
    run_chunk = b.chunks(chunk, len(train))
    x_train, x_sub = D.to_global(jnp.asarray(train), b.mesh), jnp.asarray(test[:EVAL_SUBSET])
    bound = jax.jit(lambda st, x, k: jnp.mean(b.test_bound(st, x, k)))
    ekey = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0x65766131)
    cks = run_dir.Checkpoints(out, s, last=done if ck else None)
    t0 = time.perf_counter()

    def summarize(m):
        r = {}
        for k in ("m_loss", "log_z", "sleep"):
            if k in m:
                v = np.asarray(m[k], np.float64)
                sel = np.asarray(m["m_step"], bool) if k == "m_loss" and "m_step" in m else slice(None)
                if np.size(v[sel]):
                    r[k] = float(np.mean(v[sel]))
        return r

    with run_dir.MetricsLog(out, run_dir.read_rows(out, run_dir.upto(done)) if ck else [],
                            tensorboard=s.tensorboard) as log:
        state = loop.host_loop(state, run_chunk, s.steps - done, chunk, data_fn=lambda c: x_train,
                               summarize=summarize,
                               evaluate=lambda st: {"test_bound": float(bound(st, x_sub, ekey))},
                               on_log=log.write, progress=progress, desc=f"dvae/{s.method}",
                               postfix=("loss", "test_bound"), wall_offset=log.wall_offset(),
                               **cks.loop_kwargs())
    rows = log.rows
    train_s = time.perf_counter() - t0
    cks.save(state)  # collective with several processes
    state = D.to_local(state)
    summary = {"method": s.method, "codes": s.codes, "grid": s.grid, "steps": s.steps,
               "data": s.data, "n_train": int(len(train)), "n_test": int(len(test)),
               "final": rows[-1] if rows else {}, "test_bound": rows[-1]["test_bound"] if rows else None,
               "train_wall_s": train_s}
    if not D.is_primary():  # only process 0 writes the run files
        return {"final": rows[-1] if rows else {}, "summary": summary, "state": state}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    if s.plot:
        write_pngs(b, state, test, out, s.seed)
    return {"final": rows[-1] if rows else {}, "summary": summary, "state": state}


def write_pngs(b: Built, state, test, out: str, seed: int, n: int = 32) -> None:
    """reconstructions.png (originals over greedy-code reconstructions), prior_samples.png."""
    key = jax.random.PRNGKey(seed + 1)
    x = jnp.asarray(test[:n])
    rec = np.asarray(b.decode_mean(state, b.codes(state, x, key)))
    ev.save_png(os.path.join(out, "reconstructions.png"), ev.reconstruction_grid(np.asarray(x), rec, 16))
    z = b.prior_codes(state, key, 64)
    ev.save_png(os.path.join(out, "prior_samples.png"), ev.tile(np.asarray(b.decode_mean(state, z)), 16))


def load_run(run: str):
    """(settings, Built, state, train, test) of a run directory with a checkpoint."""
    cfg = run_dir.load_config(run)
    if "method" not in cfg or cfg.get("method") not in METHODS or "codes" not in cfg:
        raise ValueError(f"run {run!r} is not a dvae run")
    s = _settings(dict(cfg, devices=1))  # the devices it trained on need not be here
    train, test = load_data(s)
    b = Built(s, train.shape[1:], jnp.asarray(train[0]))
    ck = checkpoint.latest(run)
    if ck is None:
        raise ValueError(f"run {run!r} holds no checkpoint")
    return s, b, checkpoint.restore(ck, b.state), train, test


def evaluate_run(run_dir: str, is_samples: int = 5000, rows: int = 8192, seed: int = 0) -> Dict[str, Any]:
    """Test NLL of a run (IS with the encoder, or the VQ-VAE bound); writes run_dir/eval.json.

    Returns {"nll" (nats per test image), "nll_sem", "is_samples", "n_images", "codes",
    "method", "bound" ("is" or "vq"), "eval_wall_s"}."""
    if is_samples < 1:
        raise ValueError(f"is_samples must be >= 1, got {is_samples}")
    s, b, state, _, test = load_run(run_dir)
    t0 = time.perf_counter()
    if s.method == "vqvae":
        ll = -ev.vq_nll_bound(b.model, state.model, test)
        kind, S = "vq", 0
    else:
        ll = ev.is_log_likelihood(b.env, b.policy, state.sampler, b.model.log_joint, state.model,
                                  test, jax.random.PRNGKey(seed), is_samples, rows)
        kind, S = "is", is_samples
    res = {**ev.nats_summary(ll), "is_samples": S, "n_images": int(len(test)), "codes": s.codes,
           "method": s.method, "bound": kind, "grid": s.grid,
           "bits_per_dim_lower": None, "eval_wall_s": time.perf_counter() - t0}
    res["bits_per_dim_lower"] = res["nll"] / (math.log(2) * float(np.prod(test.shape[1:])))
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    return res
