"""The discrete VAE's pieces for ``gfnem_jax.experiments.dvae``: data, model / encoder, the
GFlowNet-EM updates, the VQ-VAE step, the chunks, and the held-out evaluations.

Every function takes the run's ``DVAESettings`` (``s``). The GFlowNet-EM step is
``loop.make_step`` with ``loop.Schedule("fixed", e_steps, m_steps)``: E-steps (the objective
``loss`` scaled by ``loss_scale``, then ``em``'s sleep phase with probability ``sleep_prob``) and
M-steps (``em``'s expected NLL; the argmax grid of q for ``greedy``).

How a chunk runs (``Built.make_chunk``): on accelerators, n steps of that one step in one
``lax.scan`` (the E/M choice inside the step). On XLA:CPU, n calls of a jitted one-step program
without any loop or branch around it, one program per phase (the phase of step t is
t mod (e_steps + m_steps) < e_steps; chunks never straddle phases): XLA:CPU leaves the
convolutions inside a while loop or a conditional in a form it runs several times slower (it
canonicalises convolutions only in a program's entry computation; measured at the default
settings: 25 ms per step this way against 135 ms with the E/M choice inside the step, in a scan
or per step). Same keys either way (step t uses fold_in(run_key, t)); the two ways agree to float
rounding, not bitwise (different compiled programs).
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import em, loop, run_dir
from gfnem_jax import distributed as D
from gfnem_jax.data.images import load
from gfnem_jax.envs.sequence import SeqState, Sequence
from gfnem_jax.experiments import dvae_eval as ev
from gfnem_jax.models.dvae import DVAE, VQVAE
from gfnem_jax.models.dvae_encoder import DVAEEncoder


def load_data(s):
    """(train float[N, H, W], test float[M, H, W]) of ``s.data``; ValueError naming grid or
    batch_size when they do not fit the images."""
    data = load(s.data)
    H, W = data.shape
    if not 1 <= s.grid <= min(H, W):
        raise ValueError(f"grid must be in [1, {min(H, W)}] for {H}x{W} images, got {s.grid}")
    if s.batch_size > len(data.train):
        raise ValueError(f"batch_size must be <= {len(data.train)} (training images), got {s.batch_size}")
    test = data.test[: s.n_test] if s.n_test else data.test
    return data.train, test


def adam(lr: float, s, n_updates: int):
    """Adam at ``lr``, times ``lr_drop`` after ``lr_drop_at`` of ``n_updates`` updates."""
    sched = optax.piecewise_constant_schedule(lr, {max(1, int(s.lr_drop_at * n_updates)): s.lr_drop})
    return optax.adam(sched)


def make_parts(s, shape):
    """(model, env, policy) for the settings and image shape [H, W] (a VQVAE and no env and
    policy for vqvae)."""
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
    """int[L] code grid -> the terminal ``SeqState``."""
    return SeqState(z.astype(jnp.int32), jnp.asarray(z.shape[-1], jnp.int32))


def gflownet_updates(s, model: DVAE, env, policy, params, select_sleep: bool):
    """(GFlowNet, E-update, M-update, sleep hook, gfn_tx, m_tx, EMConfig): ``em.em_updates``.

    E: the objective ``loss`` with exploration, gradients scaled by ``loss_scale``; log Z on its
    own learning rate (both dropping after ``lr_drop_at`` of the E- and sleep updates); with a
    target network (soft_q / munchausen, tau < 1) the optimizer keeps it (``loop.with_target``:
    a Polyak step after every E- and sleep update). M: expected
    NLL on z ~ q (gflownet, factorized) or the argmax grid (greedy). Sleep: ``em.sleep_update``
    with probability ``sleep_prob``, chosen by ``jnp.where`` when ``select_sleep`` (XLA:CPU).
    """
    from gfnem_jax.gflownet import GFlowNet
    from gfnem_jax.sampling import forward_rollout
    gfn = GFlowNet(env, policy, s.objective(), s.explore())
    n_e, n_m = em.fixed_updates(s.steps, s.e_steps, s.m_steps)
    n_e = int(n_e * (1 + s.sleep_prob))
    labels = jax.tree.map(lambda m: "logz" if m else "policy", policy.log_z_mask(params))
    gfn_tx = optax.chain(optax.scale(s.loss_scale), optax.multi_transform(
        {"policy": adam(s.lr, s, n_e), "logz": adam(s.lr_logz, s, n_e)}, labels))
    if gfn.objective.needs_target:  # soft_q / munchausen with tau < 1: the Polyak copy
        gfn_tx = loop.with_target(gfn_tx, gfn.objective.tau)
    m_tx = adam(s.lr_m, s, n_m)
    cfg = em.EMConfig(e_batch=s.batch_size, m_batch=s.batch_size, schedule="fixed",
                      e_steps=s.e_steps, m_steps=s.m_steps, sleep_prob=s.sleep_prob,
                      sleep_select=select_sleep)
    lm = em.LatentModel(model.log_joint, model.sample, model.sample_rows)
    e_upd, m_upd, sleep = em.em_updates(gfn, lm, cfg, gfn_tx, m_tx, z_to_state=z_to_state)
    if s.method == "greedy":
        def prepare(theta, p, batch, key, shard):
            x = batch["m"]
            tr = forward_rollout(env, policy, p, key, x.shape[0], lambda *_: jnp.zeros(()), None,
                                 x, ev.GREEDY, shard.offset(x.shape[0]), sampling_pass=True)
            return {"x": x, "z": jax.vmap(env.terminal_value)(tr.terminal)[:, None],
                    "w": jnp.ones((x.shape[0], 1), jnp.float32), "acc": jnp.zeros((x.shape[0],))}
        m_upd = m_upd._replace(prepare=prepare)
    return gfn, e_upd, m_upd, sleep, gfn_tx, m_tx, cfg


def vq_step(vq: VQVAE, tx, mesh=None):
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


def per_step(step, n: int, batch_fn):
    """run_chunk(state, data) -> (state, metrics[n]): n calls of ``loop.make_chunk(step, 1)`` (a
    jitted step with no loop around it; XLA:CPU, see the module docstring). With several
    processes the metrics come back as this process's replica (``distributed.to_local``)."""
    one = loop.make_chunk(step, 1, batch_fn)

    def run_chunk(state, data=None):
        ms = []
        for _ in range(n):
            state, m = one(state, data)
            ms.append(D.to_local(m))
        return state, jax.tree.map(lambda *a: jnp.concatenate(a), *ms)

    return run_chunk


class Built:
    """Everything a run needs, rebuilt from settings: model, env, policy, the step(s), the
    initial ``loop.LoopState``, and the mesh of ``devices`` (None for one).

    scan: one ``lax.scan`` per chunk (default: on accelerators; module docstring)."""

    def __init__(self, s, shape, example_x, scan: bool = None):
        self.s = s
        self.scan = jax.default_backend() != "cpu" if scan is None else scan
        self.mesh = loop.make_mesh(s.devices)
        self.model, self.env, self.policy = make_parts(s, shape)
        self.ecfg = em.EMConfig(e_batch=s.batch_size, m_batch=s.batch_size)
        key = jax.random.PRNGKey(s.seed)
        if s.method == "vqvae":
            tx = adam(s.lr_m, s, s.steps)
            params = self.model.init(jax.random.fold_in(key, 1))
            self.state = loop.init_state(None, None, params, None, key)._replace(
                model_opt=tx.init(params["nets"]))
            self.steps = {"m": vq_step(self.model, tx, self.mesh)}
            return
        params = self.policy.init(jax.random.fold_in(key, 0x7FFFFFFF),
                                  self.env.observe(self.env.init()), example_x)
        theta = self.model.init(jax.random.fold_in(key, 1))
        self.gfn, e, m, sleep, gfn_tx, m_tx, self.ecfg = gflownet_updates(
            s, self.model, self.env, self.policy, params, select_sleep=not self.scan)
        self.state = loop.init_state(params, gfn_tx, theta, m_tx, key)
        if self.scan:
            self.steps = {"em": loop.make_step(e, m, self.ecfg.loop_schedule(),
                                               after_sampler=sleep, mesh=self.mesh)}
        else:  # one program per phase (module docstring)
            self.steps = {"e": loop.make_step(e, None, loop.Schedule("sampler"),
                                              after_sampler=sleep, mesh=self.mesh),
                          "m": loop.make_step(None, m, loop.Schedule("model"), mesh=self.mesh)}

    def make_chunk(self, n: int, n_train: int):
        """run_chunk(state, data) of n steps (n divides e_steps and m_steps: a chunk never
        straddles a phase). The state is made global over the mesh first
        (``distributed.to_global``; a no-op in one process); ``data`` must be global already."""
        bf = em.batch_fn(self.ecfg, n_train)
        runs = {k: (loop.make_chunk if self.scan else per_step)(st, n, bf)
                for k, st in self.steps.items()}
        cyc = self.s.e_steps + self.s.m_steps

        def run_chunk(state, data):
            state = D.to_global(state, self.mesh)
            if len(runs) == 1:
                return next(iter(runs.values()))(state, data)
            phase_e = int(D.to_local(state.step)) % cyc < self.s.e_steps
            return runs["e" if phase_e else "m"](state, data)

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
        """float[N, H, W] = E[x | z] of code grids z int32[N, L]."""
        return jax.vmap(lambda zz: jax.nn.sigmoid(self.model.logits(state.model, zz)))(z)

    def prior_codes(self, state, key, n):
        """int32[n, L] code grids from the prior."""
        if self.s.method == "vqvae":
            return jax.random.randint(key, (n, self.model.length), 0, self.s.codes)
        return self.model.sample_prior(state.model, key, n)


def write_pngs(b: Built, state, test, out: str, seed: int, n: int = 32) -> None:
    """reconstructions.png (originals over greedy-code reconstructions), prior_samples.png."""
    key = jax.random.PRNGKey(seed + 1)
    x = jnp.asarray(test[:n])
    rec = np.asarray(b.decode_mean(state, b.codes(state, x, key)))
    ev.save_png(os.path.join(out, "reconstructions.png"), ev.reconstruction_grid(np.asarray(x), rec, 16),
                title="held-out images (rows 1, 3, ...) over their reconstructions from greedy codes")
    z = b.prior_codes(state, key, 64)
    ev.save_png(os.path.join(out, "prior_samples.png"), ev.tile(np.asarray(b.decode_mean(state, z)), 16),
                title="decoded code grids drawn from the learned prior")
