"""The one alternating loop: sampler update + model update, chunks, the host loop, the mesh.

Every kind of run (plain GFlowNet training, GFlowNet-EM, a decoder's or an energy's training) is

    step(state, batch, key) -> (state, metrics)          one jitted step (``make_step``)
    run_chunk(state, data) -> (state, metrics[n])        n steps in one lax.scan (``make_chunk``)
    make_train(...)(key, data) -> (state, metrics)       a whole run as one function (vmap seeds)

A step does a *sampler* update (a GFlowNet objective whose reward may depend on the model
parameters held in the state) and/or a *model* update (EM's expected NLL, a decoder's NLL, an
energy's contrastive loss), under a ``Schedule``. Each side is an ``Update`` of three pure pieces:

    prepare(own, other, batch, key, shard) -> aux     sampling, no gradient (rollouts, MCMC)
    terms(own, other, aux) -> q                       per-sample differentiable terms [b, ...]
    reduce(q, aux) -> (loss, metrics)                 the loss of the whole (global) batch

or, for a side that only moves its state (persistent MCMC chains), a ``Move``:

    move(own, other, batch, key, shard) -> (own', metrics)   no loss, no gradient, no optimizer

Data parallelism (``shard_step``, given a ``jax.sharding.Mesh``) shards ``batch`` along its
leading axis; ``prepare`` and ``terms`` run on a device's shard, ``q`` and ``aux`` are gathered so
that ``reduce`` sees the *global* batch (leave-one-out baselines, log-variance, self-normalized
weights are global statistics), and the gradient is pulled back through each shard's ``terms``
and summed over devices. 1 and N devices therefore give the same gradients to float tolerance; the
single-device path is the same code with a trivial shard.

Keys: step t uses ``fold_in(run_key, t)``; a step's batch is drawn with ``fold_in(step_key,
BATCH_TAG)``; per-sample keys inside ``prepare`` use the sample's global index
(``shard.offset(b)``), so the samples do not depend on how the batch is split.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import keys

AXIS = "batch"
BATCH_TAG = keys.BATCH
SCHEDULES = ("sampler", "model", "both", "fixed", "adaptive")


class LoopState(NamedTuple):
    """sampler / model: parameters (either may be None); *_opt: their optimizer states;
    ema: float[] EMA of the sampler loss (adaptive schedule); step: int32[]; key: the run key;
    extra: any state a run carries between steps (persistent chains, ...)."""

    sampler: Any
    sampler_opt: Any
    model: Any
    model_opt: Any
    ema: jax.Array
    step: jax.Array
    key: jax.Array
    extra: Any = None


class Shard(NamedTuple):
    """Where a step runs: ``index`` of this device on the batch axis (int32[]), ``count`` devices,
    ``axis`` the mesh axis name (None on one device)."""

    index: Any = 0
    count: int = 1
    axis: Optional[str] = None

    def offset(self, local_size: int):
        """Global index of this shard's first sample for a local batch of ``local_size``."""
        return self.index * local_size

    def gather(self, tree):
        """Concatenate every device's shard along the leading axis (identity on one device)."""
        if self.axis is None:
            return tree
        return jax.tree.map(lambda a: jax.lax.all_gather(a, self.axis, tiled=True), tree)

    def local(self, tree):
        """This device's rows of a gathered (global) pytree."""
        if self.axis is None:
            return tree
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(
            a, self.index * (a.shape[0] // self.count), a.shape[0] // self.count), tree)

    def sum(self, tree):
        return tree if self.axis is None else jax.lax.psum(tree, self.axis)

    def mean(self, tree):
        return tree if self.axis is None else jax.lax.pmean(tree, self.axis)


class Update(NamedTuple):
    """One side of the alternating step (see the module docstring). ``terms_aux``: ``terms``
    returns ``(q, aux)``, and that aux (not prepare's) goes to ``reduce`` (when the sampling itself
    happens inside the differentiated ``terms``: ``GFlowNet.rollout_terms``).

    What a side carries between steps besides its parameters rides in its optimizer slot of the
    ``LoopState`` (``with_carry``), so checkpoints and resumes keep it:
    ``uses_target``: ``prepare`` is called with ``target=`` the lagged copy of the parameters (soft
    Q-learning's target network); ``uses_memory``: with ``memory=`` the carried memory (a replay
    buffer), and it returns ``(aux, memory')``, stored back after the optimizer step."""

    prepare: Callable[..., Any]
    terms: Callable[..., Any]
    reduce: Callable[..., Any]
    tx: optax.GradientTransformation
    terms_aux: bool = False
    uses_target: bool = False
    uses_memory: bool = False


class Carried(NamedTuple):
    """The state of a ``with_carry`` transformation: the wrapped optimizer's state, the target
    parameters (a pytree like the parameters, or None) and the memory (any pytree, or None)."""

    inner: Any
    target: Any = None
    memory: Any = None


class Carrying(NamedTuple):
    """An optax transformation (``init``, ``update``) whose state also carries a target copy of
    the parameters and / or a memory (``with_carry``). ``base``: the wrapped transformation;
    ``rate``: the target's Polyak rate (None: no target); ``memory``: the memory's initial value
    (None: no memory)."""

    init: Callable[..., Any]
    update: Callable[..., Any]
    base: Any
    rate: Optional[float]
    memory: Any


def with_carry(tx, rate: Optional[float] = None, memory: Any = None) -> Carrying:
    """``tx`` (a plain optax transformation, or a ``Carrying`` whose base is taken) whose state
    also holds

    * with ``rate``: a lagged copy of the parameters (a target network), target_0 = params_0 and
      target_{k+1} = (1 - rate) target_k + rate params_{k+1} after each update (Polyak
      averaging; ``rate`` 1 copies the new parameters);
    * with ``memory``: that pytree, its initial value, which an ``Update`` with ``uses_memory``
      replaces after each of its steps (``apply_update``); the optimizer leaves it as it is.

    The updates are ``tx``'s unchanged."""
    if isinstance(tx, Carrying):
        tx = tx.base
    if rate is not None and not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")

    def init(params):
        return Carried(tx.init(params), params if rate is not None else None, memory)

    def update(grads, state, params=None):
        upd, inner = tx.update(grads, state.inner, params)
        target = state.target
        if rate is not None:
            target = optax.incremental_update(optax.apply_updates(params, upd), target, rate)
        return upd, Carried(inner, target, state.memory)

    return Carrying(init, update, tx, None if rate is None else float(rate), memory)


def with_target(tx, rate: float) -> Carrying:
    """``tx`` keeping a target copy of the parameters at Polyak rate ``rate`` (``with_carry``;
    a memory that ``tx`` already carries is kept)."""
    return with_carry(tx, rate, tx.memory if isinstance(tx, Carrying) else None)


def with_memory(tx, memory: Any) -> Carrying:
    """``tx`` also carrying ``memory`` (``with_carry``; a target that ``tx`` already keeps is
    kept)."""
    return with_carry(tx, tx.rate if isinstance(tx, Carrying) else None, memory)


class Move(NamedTuple):
    """A side that only moves its state (persistent MCMC chains): no loss, no gradient, no
    optimizer. Accepted wherever an ``Update`` is (``make_step``, ``apply_update``).

    move(own, other, batch, key, shard) -> (own', metrics): the new state of this side given the
      other side's parameters (e.g. chains moved under the current energy). With a mesh, ``batch``
      is this device's shard, and ``own'`` and the metrics must be global (replicated): move this
      device's rows, then ``shard.gather`` them.
    Its optimizer slot in the ``LoopState`` is passed through untouched (``init_state`` with
    ``tx=None`` puts None there); its loss is 0, or NaN when ``own'`` holds a NaN or an Inf (so
    the host loop stops at that step, as for an ``Update``'s non-finite gradient)."""

    move: Callable[..., Any]
    tx: None = None  # no optimizer (read by code that asks any side for its ``tx``)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When each side updates.

    kind: "sampler" (every step a sampler update, no model), "model" (model only), "both" (every
      step a sampler then a model update), "fixed" (step t is a sampler step if
      t mod (e_steps + m_steps) < e_steps, else a model step), "adaptive" (every step a sampler
      step; a model step follows when ema_t < threshold(t), ema_t = d ema_{t-1} + (1 - d) loss_t,
      ema_0 = loss_0, d = ema_decay, threshold linear from threshold_start at step 0 to
      threshold_end at step threshold_steps).
    """

    kind: str = "sampler"
    e_steps: int = 1
    m_steps: int = 1
    ema_decay: float = 0.9
    threshold_start: float = 1.0
    threshold_end: float = 0.05
    threshold_steps: int = 1000

    def validate(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if self.e_steps < 1 or self.m_steps < 1:
            raise ValueError(f"e_steps and m_steps must be >= 1, got {self.e_steps} and {self.m_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.threshold_start >= self.threshold_end >= 0:
            raise ValueError(f"thresholds must satisfy threshold_start >= threshold_end >= 0, got "
                             f"{self.threshold_start} and {self.threshold_end}")
        if self.threshold_steps < 0:
            raise ValueError(f"threshold_steps must be >= 0, got {self.threshold_steps}")

    def threshold(self, step) -> jax.Array:
        frac = jnp.clip(step / max(self.threshold_steps, 1), 0.0, 1.0)
        return self.threshold_start + (self.threshold_end - self.threshold_start) * frac


def global_grad(update: Update, own, other, aux, shard: Shard):
    """(loss, metrics, grads) of ``update`` on the global batch; grads summed over devices."""
    if update.terms_aux:
        q, pull, aux = jax.vjp(lambda p: update.terms(p, other, aux), own, has_aux=True)
    else:
        q, pull = jax.vjp(lambda p: update.terms(p, other, aux), own)
    q_all, aux_all = shard.gather((q, aux))
    (loss, metrics), dq_all = jax.value_and_grad(update.reduce, has_aux=True)(q_all, aux_all)
    (g,) = pull(shard.local(dq_all))
    return loss, metrics, shard.sum(g)


def apply_update(update, own, opt, other, batch, key, shard: Shard):
    """prepare -> global gradient -> one optimizer step. Returns (own, opt, loss, metrics).

    A gradient holding a NaN or Inf makes the returned loss NaN, so the host loop stops at the
    step where it happened, even when the loss itself was finite. A ``Move`` moves ``own``
    instead; ``opt`` comes back as it was, the loss is 0 (NaN for a non-finite ``own'``)."""
    if isinstance(update, Move):
        own, metrics = update.move(own, other, batch, key, shard)
        return own, opt, jnp.where(tree_finite(own), 0.0, jnp.nan).astype(jnp.float32), metrics
    carried = {}  # what the optimizer state carries for ``prepare`` (``with_carry``)
    if update.uses_target:
        carried["target"] = opt.target
    if update.uses_memory:
        carried["memory"] = opt.memory
    aux = update.prepare(own, other, batch, key, shard, **carried)
    if update.uses_memory:
        aux, memory = aux
    loss, metrics, g = global_grad(update, own, other, aux, shard)
    loss = jnp.where(tree_finite(g), loss, jnp.nan)
    upd, opt = update.tx.update(g, opt, own)
    if update.uses_memory:
        opt = opt._replace(memory=memory)
    return optax.apply_updates(own, upd), opt, loss, metrics


def tree_finite(tree) -> jax.Array:
    """bool[]: every floating-point leaf of ``tree`` is finite (no NaN, no Inf)."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


def _skip_like(fn, *args):
    """Zeros with the output structure of ``fn(*args)`` (the branch not taken in a lax.cond)."""
    shapes = jax.eval_shape(fn, *args)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_step(sampler: Optional[Update] = None, model: Optional[Update] = None,
              schedule: Schedule = Schedule(), after_sampler: Optional[Callable] = None,
              mesh=None):
    """``step(state, batch, key) -> (state, metrics)``: the one alternating step.

    Args:
      sampler, model: the two sides, each an ``Update`` or a ``Move`` (either may be None, as the
        schedule allows).
      schedule: when each side runs (``Schedule``).
      after_sampler: optional ``(state, batch, key, shard) -> (state, metrics)`` run after each
        sampler update (e.g. EM's sleep phase); its metrics must not depend on whether it ran.
      mesh: a ``jax.sharding.Mesh`` with axis "batch": the step is sharded over it
        (``shard_step``); None = one device, the same code.
    Metrics: "loss" (the sampler loss, 0 on steps without one), "m_loss", "e_step", "m_step",
    "ema", "threshold" (schedules that use them), and the reduce functions' own metrics.
    """
    schedule.validate()
    kind = schedule.kind
    if sampler is None and kind != "model":
        raise ValueError(f"schedule {kind!r} needs a sampler update")
    if model is None and kind not in ("sampler",):
        raise ValueError(f"schedule {kind!r} needs a model update")

    def sampler_side(st: LoopState, batch, key, shard):
        params, opt, loss, m = apply_update(sampler, st.sampler, st.sampler_opt, st.model, batch,
                                            key, shard)
        st = st._replace(sampler=params, sampler_opt=opt)
        if after_sampler is not None:
            st, m2 = after_sampler(st, batch, jax.random.fold_in(key, 1), shard)
            m = {**m, **m2}
        return st, loss, m

    def model_side(st: LoopState, batch, key, shard):
        params, opt, loss, m = apply_update(model, st.model, st.model_opt, st.sampler, batch,
                                            key, shard)
        return st._replace(model=params, model_opt=opt), loss, m

    def conditional(pred, side, st, batch, key, shard):
        def run(s):
            return side(s, batch, key, shard)

        def skip(s):
            _, loss, m = _skip_like(run, s)
            return s, loss, m
        return jax.lax.cond(pred, run, skip, st)

    def inner(st: LoopState, batch, key, shard: Shard):
        ke, km = jax.random.split(key)
        t = st.step
        metrics: Dict[str, Any] = {}
        if kind in ("sampler", "both", "adaptive"):
            do_e = jnp.ones((), bool)
            st, e_loss, me = sampler_side(st, batch, ke, shard)
        elif kind == "fixed":
            do_e = (t % (schedule.e_steps + schedule.m_steps)) < schedule.e_steps
            st, e_loss, me = conditional(do_e, sampler_side, st, batch, ke, shard)
        else:
            do_e, e_loss, me = jnp.zeros((), bool), jnp.zeros((), jnp.float32), {}
        metrics.update(me)
        if kind == "adaptive":
            d = schedule.ema_decay
            ema = jnp.where(t == 0, e_loss, d * st.ema + (1 - d) * e_loss)
            thr = schedule.threshold(t)
            st = st._replace(ema=ema)
            metrics.update(ema=ema, threshold=thr)
            do_m = ema < thr
        elif kind == "fixed":
            do_m = ~do_e
        else:
            do_m = jnp.asarray(kind in ("model", "both"))
        if kind in ("model", "both"):
            st, m_loss, mm = model_side(st, batch, km, shard)
        elif kind in ("fixed", "adaptive"):
            st, m_loss, mm = conditional(do_m, model_side, st, batch, km, shard)
        else:
            m_loss, mm = None, {}
        metrics.update(mm)
        metrics["loss"] = e_loss
        if m_loss is not None:
            metrics.update(m_loss=m_loss, e_step=do_e, m_step=do_m)
        return st._replace(step=st.step + 1), metrics

    return shard_step(inner, mesh)


def shard_step(inner, mesh=None):
    """The one data-parallel wrapper: ``inner(state, batch, key, shard)`` over ``mesh``.

    The state and key are replicated, ``batch`` (any pytree, leaves with a leading batch axis) is
    split along the mesh axis "batch"; outputs are replicated (every statistic is global). With
    ``mesh=None`` the step runs on one device with a trivial ``Shard``: the same code.
    """
    if mesh is None:
        return lambda st, batch, key: inner(st, batch, key, Shard())
    from jax.sharding import PartitionSpec as P
    n = mesh.shape[AXIS]

    def body(st, batch, key):
        return inner(st, batch, key, Shard(jax.lax.axis_index(AXIS), n, AXIS))

    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
                         check_vma=False)


def make_mesh(n_devices: int, devices=None):
    """A 1-D mesh with axis "batch" over the first ``n_devices`` devices (None for 1).

    With several processes (``gfnem_jax.distributed``) the mesh takes n_devices / P devices of
    each of the P processes (n_devices must be a multiple of P), ordered by process."""
    if n_devices <= 1 and devices is None and jax.process_count() == 1:
        return None
    if devices is None and jax.process_count() > 1:
        P_ = jax.process_count()
        if n_devices % P_:
            raise ValueError(f"devices {n_devices} must be a multiple of the {P_} processes")
        per = n_devices // P_
        by_proc = {}
        for d in jax.devices():
            by_proc.setdefault(d.process_index, []).append(d)
        if any(len(v) < per for v in by_proc.values()):
            raise ValueError(f"devices {n_devices} needs {per} devices in each of the {P_} processes")
        devs = [d for p in sorted(by_proc) for d in by_proc[p][:per]]
    else:
        devs = list(devices if devices is not None else jax.devices())[:n_devices]
    return jax.sharding.Mesh(np.asarray(devs), (AXIS,))


def _body(step, batch_fn, eval_fn, data):
    def body(st, i):
        key = jax.random.fold_in(st.key, st.step)
        batch = None if batch_fn is None else batch_fn(data, jax.random.fold_in(key, BATCH_TAG), i)
        st, m = step(st, batch, key)
        if eval_fn is not None:
            m = {**m, **eval_fn(st, data)}
        return st, m
    return body


def make_chunk(step, n: int, batch_fn: Optional[Callable] = None,
               eval_fn: Optional[Callable] = None):
    """Jitted ``run_chunk(state, data=None) -> (state, metrics[n])``: n steps in one lax.scan.

    batch_fn(data, key, i) -> the batch of the chunk's i-th step: draw it from a device-resident
      data set (``data`` is an argument, never a compile-time constant), or pick row i of
      host-fed per-step batches (``data`` leaves [n, ...]). None: steps take no batch.
    eval_fn(state, data) -> dict of scalars evaluated after every step (e.g. a log-likelihood).
    n = 1 compiles the step alone, without a loop around it (same keys, same batches).
    """
    if n == 1:  # no loop: XLA:CPU runs convolutions ~20x slower inside a while loop
        @jax.jit
        def run_one(state, data=None):
            state, m = _body(step, batch_fn, eval_fn, data)(state, jnp.zeros((), jnp.int32))
            return state, jax.tree.map(lambda a: a[None], m)

        return run_one

    @jax.jit
    def run_chunk(state, data=None):
        return jax.lax.scan(_body(step, batch_fn, eval_fn, data), state, jnp.arange(n))

    return run_chunk


def make_train(init_fn: Callable, step, steps: int, batch_fn: Optional[Callable] = None,
               eval_fn: Optional[Callable] = None, final_fn: Optional[Callable] = None):
    """A whole run as one function (purejaxrl style): ``train(key, data=None)``.

    init_fn(key) -> LoopState; the run is one lax.scan of ``steps`` steps; returns
    (state, metrics[steps]) or, with ``final_fn(state, data) -> pytree``, (state, metrics, final).
    Jit it, or vmap it over keys to train several seeds in one call.
    """
    def train(key, data=None):
        state = init_fn(key)
        state, metrics = jax.lax.scan(_body(step, batch_fn, eval_fn, data), state,
                                      jnp.arange(steps))
        if final_fn is None:
            return state, metrics
        return state, metrics, final_fn(state, data)

    return train


def init_state(sampler, sampler_tx, model=None, model_tx=None, key=None, extra=None) -> LoopState:
    """LoopState at step 0: optimizer states from the transformations (a side without one, e.g.
    fixed reward parameters in the model slot, gets None)."""
    return LoopState(sampler, None if sampler_tx is None else sampler_tx.init(sampler), model,
                     None if model_tx is None else model_tx.init(model), jnp.zeros((), jnp.float32),
                     jnp.zeros((), jnp.int32), key, extra)
