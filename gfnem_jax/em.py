"""GFlowNet-EM (Hu et al., ICML 2023): EM whose E-step is a GFlowNet trained to sample p_theta(z|x).

A latent variable model is a pair of pure functions, ``LatentModel(log_joint, sample)``:
  log_joint(theta, x, z) -> float[]       log p_theta(x, z) for one data point and one latent
  sample(theta, key, n) -> (x[n,..], z[n,..]) or (x, z, ok bool[n])   ancestral samples (only for
      the sleep phase; rows with ok False, e.g. sentences over the length limit, are left out)
The GFlowNet's log-reward is ``log_joint(theta, x, to_z(state))`` with the current theta, and the
GFlowNet is conditioned on x (``cond``).

One EM step is the one alternating step of ``gfnem_jax.loop`` with the updates ``em_updates``
builds (keys all derived from the per-step key ``fold_in(run_key, t)``):
  E-step   a GFlowNet loss (``GFlowNet.loss``, with its exploration) on B data points x drawn
           uniformly from the data set; one optimizer step on the policy (and log Z(x)).
  sleep    (switchable, probability ``sleep_prob`` per E-step) draw (x, z) ~ p_theta and take a
           step on -mean log P_F(tau_z | x) (MLE of the forward policy on the trajectory of z).
  M-step   draw S = ``m_samples`` latents z_is ~ P_F(. | x_i) per point (on-policy, no gradient
           through the sampler), optionally refine them by local search, then one optimizer step on
               L(theta) = -(1/N) sum_i sum_s w_is log p_theta(x_i, z_is)          (``expected_nll``)
           with w_is = 1/S (``m_weights`` "uniform"), or self-normalised importance weights
           w_is = softmax_s [log p_theta(x_i, z_is) + log P_B(tau_is | z_is) - log P_F(tau_is | x_i)]
           ("is": corrects the sampler's error; consistent as S grows; not with local search).
           Exact EM and mean-field EM use the same function with z = every latent and w = the
           exact / mean-field posterior.
  local search (switchable) ``ls_rounds`` rounds of: go back ``ls_back`` steps with P_B, forward
           again with P_F, accept with the Metropolis-Hastings ratio for the target p_theta(x, z).
Schedules: ``loop.Schedule`` "fixed" (k E-steps then m M-steps; ``fixed_updates`` counts each
side's updates in a run) or "adaptive" (an M-step when the EMA of the E-step loss is under a
linearly falling threshold).
Data are an argument of the compiled chunk: ``batch_fn`` draws each step's E- and M-batches.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from gfnem_jax import loop, mcmc
from gfnem_jax.gflownet import GFlowNet, sampler_update
from gfnem_jax.sampling import Exploration

SCHEDULES = ("fixed", "adaptive")


class LatentModel(NamedTuple):
    """A latent variable model as pure functions (see the module docstring). ``sample_rows(theta,
    key, n, start, size)`` (optional): rows [start, start + size) of ``sample(theta, key, n)``,
    computing only those (a device's shard of the sleep batch; ``start`` may be traced)."""

    log_joint: Callable[[Any, jax.Array, jax.Array], jax.Array]
    sample: Optional[Callable[[Any, jax.Array, int], Any]] = None
    sample_rows: Optional[Callable[..., Any]] = None


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Static settings of GFlowNet-EM.

    Attributes:
      e_batch: data points (one trajectory each) per E-step.
      m_batch: data points per M-step; 0 = the whole data set (in order).
      schedule: "fixed" (k=e_steps E-steps, then m=m_steps M-steps) or "adaptive".
      ema_decay, threshold_start, threshold_end, threshold_steps: the adaptive schedule (see the
        module docstring).
      sleep_prob: probability of a sleep-phase update after each E-step (0 = off).
      sleep_batch: (x, z) pairs per sleep update (0 = e_batch).
      sleep_select: compute the sleep update after every E-step and keep it with probability
        sleep_prob (``jnp.where``) instead of branching (``lax.cond``): same draws, same result;
        for XLA:CPU, which runs convolutions inside a branch several times slower.
      ls_rounds: local-search rounds on the M-step's samples (0 = off); ls_back: steps back.
      m_samples: GFlowNet samples per data point in the M-step (S).
      m_weights: "uniform" (1/S) or "is" (self-normalised importance weights, see module doc).
    """

    e_batch: int = 256
    m_batch: int = 0
    schedule: str = "adaptive"
    e_steps: int = 10
    m_steps: int = 1
    ema_decay: float = 0.9
    threshold_start: float = 1.0
    threshold_end: float = 0.05
    threshold_steps: int = 1000
    sleep_prob: float = 0.0
    sleep_batch: int = 0
    sleep_select: bool = False
    ls_rounds: int = 0
    ls_back: int = 1
    m_samples: int = 1
    m_weights: str = "uniform"
    def validate(self, n_data: int, max_steps: int, has_sampler: bool = True,
                 n_devices: int = 1) -> None:
        """Raise ValueError naming the setting, the value and what is allowed."""
        if self.e_batch < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.e_batch}")
        if self.e_batch % n_devices or (self.m_batch or n_data) % n_devices:
            raise ValueError(f"batch_size {self.e_batch} and m_batch_size {self.m_batch or n_data} "
                             f"must be divisible by devices {n_devices}")
        if not 0 <= self.m_batch <= n_data:
            raise ValueError(f"m_batch_size must be in [0, {n_data}] (0 = all data), got {self.m_batch}")
        self.loop_schedule().validate()
        if not 0 <= self.sleep_prob <= 1:
            raise ValueError(f"sleep_prob must be in [0, 1], got {self.sleep_prob}")
        if self.sleep_prob > 0 and not has_sampler:
            raise ValueError("sleep_prob > 0 needs a model with a sampler")
        if self.sleep_batch < 0:
            raise ValueError(f"sleep_batch must be >= 0, got {self.sleep_batch}")
        if (self.sleep_batch or self.e_batch) % n_devices:
            raise ValueError(f"sleep_batch {self.sleep_batch} must be divisible by devices {n_devices}")
        if self.ls_rounds < 0:
            raise ValueError(f"ls_rounds must be >= 0, got {self.ls_rounds}")
        if self.m_samples < 1:
            raise ValueError(f"m_samples must be >= 1, got {self.m_samples}")
        if self.m_weights not in ("uniform", "is"):
            raise ValueError(f"m_weights must be uniform or is, got {self.m_weights!r}")
        if self.m_weights == "is" and self.ls_rounds > 0:
            raise ValueError("m_weights is needs the sampler's own samples: set ls_rounds to 0 "
                             "(local search changes the proposal)")
        if not 1 <= self.ls_back <= max_steps:
            raise ValueError(f"ls_back must be in [1, {max_steps}] (the trajectory length), got {self.ls_back}")

    def loop_schedule(self) -> loop.Schedule:
        return loop.Schedule(self.schedule, self.e_steps, self.m_steps, self.ema_decay,
                             self.threshold_start, self.threshold_end, self.threshold_steps)


def fixed_updates(steps: int, e_steps: int, m_steps: int) -> Tuple[int, int]:
    """(E-updates, M-updates) in ``steps`` steps of the fixed schedule (cycles of ``e_steps``
    E-steps then ``m_steps`` M-steps, starting with the E-steps): what a learning-rate schedule
    over either side's updates counts."""
    full, rest = divmod(steps, e_steps + m_steps)
    return full * e_steps + min(rest, e_steps), full * m_steps + max(0, rest - e_steps)


# -- the M-step ----------------------------------------------------------------------------------
def joint_terms(log_joint, theta, x, z, w) -> jax.Array:
    """float[N]: sum_s w_is log p_theta(x_i, z_is) per data point (no gradient into z or w)."""
    w = jax.lax.stop_gradient(w)
    z = jax.lax.stop_gradient(z)
    lj = jax.vmap(lambda xi, zi: jax.vmap(lambda zz: log_joint(theta, xi, zz))(zi))(x, z)
    return jnp.sum(w * lj, axis=1)


def expected_nll(log_joint, theta, x: jax.Array, z: jax.Array, w: jax.Array) -> jax.Array:
    """L(theta) = -(1/N) sum_i sum_s w_is log p_theta(x_i, z_is)  (= -mean ``joint_terms``).

    Args:
      x: float[N, ...] data; z: [N, S, ...] latents (S per point); w: float[N, S] weights
        (1/S for S posterior samples; a posterior over all S latents for exact / mean-field EM).
    No gradient flows into z or w. With w = p_theta(z | x) over all latents, grad L equals
    -grad (1/N) sum_i log p_theta(x_i) (Fisher's identity).
    """
    return -jnp.mean(joint_terms(log_joint, theta, x, z, w))


def m_update(log_joint, tx: optax.GradientTransformation, theta, opt_state, x, z, w):
    """One optimizer step on ``expected_nll``; returns (theta, opt_state, loss before the step)."""
    loss, g = jax.value_and_grad(lambda th: expected_nll(log_joint, th, x, z, w))(theta)
    updates, opt_state = tx.update(g, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, loss


# -- local search ---------------------------------------------------------------------------------
def local_search(gfn: GFlowNet, log_reward_fn, reward_params, params, key, terminal, cond,
                 rounds: int, back: int, index_offset=0):
    """Back-and-forth Metropolis-Hastings refinement of terminal states (one chain per row).

    Each round, for every chain at terminal x (trajectory tau to x):
      1. sample a backward trajectory from x with P_B; s = its state ``back`` steps before x;
      2. sample forward from s with P_F to x' (new segment tau');
      3. accept x' with probability min(1, A),
         log A = [log R(x') + log P_B(tau' | x') + log P_F(tau_seg | s)]
               - [log R(x)  + log P_B(tau_seg | x) + log P_F(tau' | s)],
         where tau_seg is the last ``back`` steps of the backward trajectory and R = p_theta(x, .).
    The one implementation is ``gfnem_jax.mcmc.back_and_forth_chain`` (also EB-GFN's gfn-cd
    move); this is that function on the GFlowNet's environment and policy. Keys are per chain
    (global index ``index_offset + i``), so a chain's moves do not depend on how the batch is
    split over devices; round r uses fold_in(key, r). The chain leaves R(x) P_B invariant on the
    path space, hence R on terminal states (exactly so on tree DAGs such as ``Sequence``).

    Args:
      terminal: pytree [B, ...] of terminal states; cond: conditions [B, ...] or None.
    Returns (terminal states [B, ...], float[B] each chain's acceptance rate over the rounds).
    """
    return mcmc.back_and_forth_chain(gfn.env, gfn.policy, params, key, terminal, back, rounds,
                                     log_reward_fn, reward_params, cond, index_offset)


# -- the updates of one EM step -----------------------------------------------------------------
def batch_fn(cfg: EMConfig, n_data: int):
    """``batch_fn(data, key, i)`` for ``loop.make_chunk``: {"e": E-batch, "m": M-batch} drawn
    uniformly (with replacement) from the device-resident ``data`` [N, ...]; the M-batch is the
    whole data set in order when ``cfg.m_batch`` is 0."""
    Bm = cfg.m_batch or n_data

    def draw(data, key, i):
        ke, km = jax.random.split(key)
        pick = lambda k, n: jax.tree.map(lambda a: a[jax.random.randint(k, (n,), 0, n_data)], data)
        return {"e": pick(ke, cfg.e_batch), "m": data if Bm == n_data else pick(km, Bm)}

    return draw


def em_updates(gfn: GFlowNet, model: LatentModel, cfg: EMConfig,
               gfn_tx: optax.GradientTransformation, m_tx: optax.GradientTransformation,
               to_z: Optional[Callable] = None, z_to_state: Optional[Callable] = None):
    """(E-step Update, M-step Update, sleep hook) for ``loop.make_step``.

    E-step: ``gfnem_jax.gflownet.sampler_update`` on the batch's "e" rows with reward
      log p_theta(x, to_z(state)) (theta = the state's model parameters).
    M-step: z ~ P_F(. | x) on the "m" rows (on-policy, no gradient), local search if switched on,
      then the expected NLL -mean_i log p_theta(x_i, z_i) (``joint_terms``); metric ls_accept.
    Sleep (probability cfg.sleep_prob after each E-step; None when 0): ``sleep_hook`` of
      ``sleep_update``; metric sleep.
    """
    env = gfn.env
    to_z = to_z or env.terminal_value

    def log_reward(theta, x, state):
        return model.log_joint(theta, x, to_z(state))

    e_update = sampler_update(gfn, gfn_tx, cfg.e_batch, log_reward, cond_fn=lambda b: b["e"])

    def m_prepare(theta, params, batch, key, shard):
        kr, kl = jax.random.split(key)
        x = batch["m"]
        b = jax.tree.leaves(x)[0].shape[0]
        S = cfg.m_samples
        xs = x if S == 1 else jax.tree.map(lambda a: jnp.repeat(a, S, axis=0), x)  # [b*S], point-major
        traj = gfn.rollout(params, kr, b * S, log_reward, theta, xs, shard.offset(b * S),
                           explore=Exploration())
        term, acc = traj.terminal, jnp.zeros((b * S,), jnp.float32)
        if cfg.ls_rounds > 0:
            term, acc = local_search(gfn, log_reward, theta, params, kl, term, xs, cfg.ls_rounds,
                                     cfg.ls_back, shard.offset(b * S))
        z = jax.tree.map(lambda a: a.reshape((b, S) + a.shape[1:]), jax.vmap(to_z)(term))
        if cfg.m_weights == "is":
            ev = gfn.evaluate(jax.lax.stop_gradient(params), traj)
            logw = traj.log_reward + jnp.sum(ev.log_pb, 1) - jnp.sum(ev.log_pf, 1)
            w = jax.nn.softmax(logw.reshape(b, S), axis=1)
        else:
            w = jnp.full((b, S), 1.0 / S, jnp.float32)
        return {"x": x, "z": z, "w": w, "acc": acc}

    def m_terms(theta, params, aux):
        return joint_terms(model.log_joint, theta, aux["x"], aux["z"], aux["w"])

    def m_reduce(q, aux):
        m = {"ls_accept": jnp.mean(aux["acc"])} if cfg.ls_rounds > 0 else {}
        return -jnp.mean(q), m

    m_update_ = loop.Update(m_prepare, m_terms, m_reduce, m_tx)

    sleep = None
    if cfg.sleep_prob > 0:
        sleep = sleep_hook(sleep_update(gfn, model, cfg.sleep_batch or cfg.e_batch, gfn_tx,
                                        z_to_state), cfg.sleep_prob, cfg.sleep_select)
    return e_update, m_update_, sleep


# -- the sleep phase ------------------------------------------------------------------------------
def sleep_update(gfn: GFlowNet, model: LatentModel, batch: int,
                 gfn_tx: optax.GradientTransformation, z_to_state: Callable) -> loop.Update:
    """The sleep phase as a sampler ``loop.Update``: draw ``batch`` pairs (x, z) ~ p_theta
    (``model.sample``; the global batch, the same key on every device), sample backward
    trajectories tau of z with P_B given x, and take one step on

        L = -(1/n) sum_i log P_F(tau_i | x_i)         (MLE of the forward policy)

    over the n rows with ok True (all rows when ``model.sample`` returns no ok mask). On a mesh
    each device trains on its own rows (global sample indices); ``model.sample_rows``, when given,
    computes only those.

    Args:
      batch: pairs per update (divisible by the devices); z_to_state: z -> terminal state.
    """
    if model.sample is None or z_to_state is None:
        raise ValueError("the sleep phase (sleep_prob > 0) needs model.sample and z_to_state")

    def prepare(params, theta, _, key, shard):
        kx, kb = jax.random.split(key)
        b = batch // shard.count
        if shard.axis is not None and model.sample_rows is not None:
            drawn = model.sample_rows(theta, kx, batch, shard.offset(b), b)
        else:
            drawn = model.sample(theta, kx, batch)
            drawn = shard.local(tuple(drawn)) if shard.axis else drawn
        xs, zs = drawn[0], drawn[1]
        ok = drawn[2] if len(drawn) > 2 else None
        traj = gfn.sample_backward(params, kb, jax.vmap(z_to_state)(zs), None, None, xs,
                                   shard.offset(b))
        return traj, ok

    def terms(params, theta, aux):
        return jnp.sum(gfn.evaluate(params, aux[0]).log_pf, axis=1)

    def reduce(q, aux):
        ok = aux[1]
        if ok is None:
            return -jnp.mean(q), {}
        w = ok.astype(q.dtype)
        return -jnp.sum(jnp.where(ok, q, 0.0)) / jnp.maximum(jnp.sum(w), 1.0), {}

    return loop.Update(prepare, terms, reduce, gfn_tx)


def sleep_hook(update: loop.Update, prob: float, select: bool = False):
    """``after_sampler(state, batch, key, shard) -> (state, {"sleep": bool[]})`` for
    ``loop.make_step``: after each E-step, with probability ``prob`` (key split (coin, update)),
    one step of ``update`` (``sleep_update``) on the sampler. select: compute it every time and
    keep it with ``jnp.where`` (XLA:CPU runs convolutions inside a ``lax.cond`` branch several
    times slower); otherwise ``lax.cond``. Same draws and results either way."""

    def after(st, batch, key, shard):
        kc, ks = jax.random.split(key)
        do = jax.random.bernoulli(kc, prob)

        def run(s):
            p, o, _, _ = loop.apply_update(update, s.sampler, s.sampler_opt, s.model, batch, ks,
                                           shard)
            return s._replace(sampler=p, sampler_opt=o)

        if select:
            new = run(st)
            pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(do, u, v), a, b)  # noqa: E731
            return st._replace(sampler=pick(new.sampler, st.sampler),
                               sampler_opt=pick(new.sampler_opt, st.sampler_opt)), {"sleep": do}
        return jax.lax.cond(do, run, lambda s: s, st), {"sleep": do}

    return after


def make_em_step(gfn: GFlowNet, model: LatentModel, cfg: EMConfig,
                 gfn_tx: optax.GradientTransformation, m_tx: optax.GradientTransformation,
                 to_z: Optional[Callable] = None, z_to_state: Optional[Callable] = None,
                 mesh=None):
    """The one alternating step (``loop.make_step``) wired for GFlowNet-EM."""
    e, m, after = em_updates(gfn, model, cfg, gfn_tx, m_tx, to_z, z_to_state)
    return loop.make_step(e, m, cfg.loop_schedule(), after_sampler=after, mesh=mesh)
