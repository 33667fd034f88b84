"""A GFlowNet = environment + policy + objective + exploration, as one static bundle.

``GFlowNet`` is a frozen (hashable) dataclass, so it is a static argument of jitted functions. The
policy is any ``gfnem_jax.nets.policy.Policy`` and the objective any ``objectives.Objective``
(``objectives.subtb(lam=0.9)``, ...). Its methods are pure functions of explicit parameters and
keys. Training goes through one path, split so that data parallelism can see the global batch:

    traj = gfn.rollout(params, key, B, log_reward_fn, reward_params, cond, index_offset)
    terms = gfn.terms(params, traj, reward_params)  # per-trajectory differentiable quantities
    loss = gfn.value(terms, traj)              # the objective on (possibly gathered) terms

Two optional hooks specialise the bundle without copying it:
  engine        an object with ``rollout(env, policy, params, key, B, log_reward_fn, reward_params,
                cond, explore, index_offset) -> Trajectories`` and ``evaluate(env, policy, params,
                traj, ctx) -> Evaluation``: the training rollout and the differentiable pass (e.g.
                ``grammar.rollout.Buckets``, which shrinks the parse forest's root slots as
                trees grow; with ``one_pass`` its rollout also takes ``differentiable=True,
                ctx=ctx``). None = ``gfnem_jax.sampling``. ``sample``/``sample_backward`` (local
                search, sleep, decoding) always use the core's full pass.
  flow_offset   (reward_params, cond, state) -> float: a known part of log F(s) added to the
                network's flow at every non-terminal state, so log F(s) = offset(s) + NN(s) (the
                forward-looking flows of GFlowNet-EM: the log-probs of the rules already fixed).
                It must be 0 at s_0 for log Z to keep its meaning, and carries no gradient.
                Under an objective of the RL view it is added to the soft value V(s) (a
                state-dependent shift of the Q-values, which leaves P_F and the fixed point
                unchanged: the network learns V - offset), for the target network's too.
  flow_offset_path  optional (reward_params, cond, states [T+1, ...]) -> float[T+1]: the same
                values for a whole trajectory at once, where consecutive states share work
                (``grammar.env.ParseTree.partial_log_reward_path`` scores each node once);
                used instead of ``flow_offset`` state by state when given.

With ``one_pass=True`` the rollout keeps the gradient of its own full policy pass and the second
pass is skipped: ``terms, traj = gfn.rollout_terms(params, key, B, ...)`` (the same draws, loss and
gradient; ``sampler_update`` then samples inside the differentiated ``terms``).

``loss`` and ``traj_loss`` compose them on one device; ``sampler_update`` hands the three pieces to
``gfnem_jax.loop`` (plain training, the E-step of GFlowNet-EM, energy-based training).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gfnem_jax import losses, objectives, packing
from gfnem_jax.envs.base import Environment
from gfnem_jax.nets.policy import Policy, encode_batch
from gfnem_jax.sampling import (Evaluation, Exploration, Trajectories, backward_rollout, evaluate,
                                forward_rollout)


class Terms(NamedTuple):
    """Per-trajectory differentiable quantities the objectives need (leading axis B).

    ev: the ``Evaluation`` (log_pf, log_pb [B, T], log_flow [B, T+1]); log_z float[B] (the
    policy's log Z for each trajectory's condition, repeated when unconditional); fm float[B, 2]
    (objectives with ``edge_flows`` only: per-trajectory sum of squared residuals and number of
    visited states); target (objectives with ``needs_target`` only): the ``Evaluation`` of the
    same trajectories under the target network, no gradient.
    """

    ev: Evaluation
    log_z: jax.Array
    fm: Optional[jax.Array] = None
    target: Optional[Evaluation] = None


@dataclasses.dataclass(frozen=True)
class GFlowNet:
    env: Environment
    policy: Policy
    objective: objectives.Objective = objectives.tb()
    explore: Exploration = Exploration()
    # Pack the real (non-padding) states of a batch into the smallest of these fractions of
    # B*(T+1) before the differentiable policy pass (sampling.evaluate); None = no packing.
    eval_buckets: Optional[tuple] = None
    engine: Optional[Any] = None
    flow_offset: Optional[Any] = None
    flow_offset_path: Optional[Any] = None
    # training differentiates through the rollout (``rollout_terms``): one policy pass per state
    # instead of a sampling pass and then ``evaluate``'s; the same loss and gradient
    one_pass: bool = False
    # the core rollouts run the policy only on the trajectories that need a pass, in blocks of an
    # eighth of the batch (``packing.live_apply``); the same draws and values to float rounding.
    # The parse-tree engine has its own schedule.
    compact: bool = False

    def __post_init__(self):
        if not isinstance(self.objective, objectives.Objective):
            raise ValueError(f"objective must be an objectives.Objective (e.g. objectives.tb()), "
                             f"got {self.objective!r}")
        self.objective.check_sampling(self.explore)
        if self.one_pass and self.objective.edge_flows:
            raise ValueError("one_pass needs an objective of the trajectories' log-probabilities "
                             f"(not flow matching's edge flows), got objective "
                             f"{self.objective.name!r}")
        if self.objective.soft_values and self.one_pass:
            raise ValueError(f"loss {self.objective.name} reads the soft values of the forward "
                             f"logits, which one_pass does not provide; allowed: one_pass False")
        if (self.engine is not None and bool(getattr(self.engine, "soft_values", False))
                != self.objective.soft_values):
            raise ValueError(f"loss {self.objective.name} needs an engine with soft_values "
                             f"{self.objective.soft_values} (log F the soft value of the forward "
                             f"logits for the RL view, the flow head otherwise), got {self.engine}")

    # -- policy -------------------------------------------------------------------------------
    def init(self, key, example_cond=None) -> Any:
        """Policy parameters, initialised on the observation of s_0 (of ``example_cond``)."""
        obs = self.env.observe(self.env.init(example_cond))
        return self.policy.init(key, obs, example_cond)

    def log_z(self, params, cond=None) -> jax.Array:
        """float[] (unconditional) or float[B] (conditions with leading axis B)."""
        return self._log_z_of(params, encode_batch(self.policy, params, cond))

    def _log_z_of(self, params, ctx) -> jax.Array:
        """float[] (ctx None) or float[B]: log Z of each encoded condition."""
        if ctx is None:
            return self.policy.log_z(params, None)
        return jax.vmap(self.policy.log_z, (None, 0))(params, ctx)

    def evaluate(self, params, traj: Trajectories, ctx=None) -> Evaluation:
        if self.engine is not None:
            if ctx is None:
                ctx = encode_batch(self.policy, params, traj.cond)
            return self.engine.evaluate(self.env, self.policy, params, traj, ctx)
        return evaluate(self.env, self.policy, params, traj, self.eval_buckets, ctx,
                        self.objective.soft_values)

    def with_flow_offset(self, ev: Evaluation, traj: Trajectories, reward_params) -> Evaluation:
        """``ev`` with log F(s_t) += flow_offset(reward_params, cond, s_t) at every visited state
        (padding untouched; the objectives replace F at the terminal state by R anyway)."""
        if self.flow_offset is None:
            return ev
        rp = jax.lax.stop_gradient(reward_params)
        if self.flow_offset_path is not None:
            per = lambda c, st: self.flow_offset_path(rp, c, st)
        else:
            per = lambda c, st: jax.vmap(lambda s: self.flow_offset(rp, c, s))(st)
        if traj.cond is None:
            g = jax.vmap(lambda st: per(None, st))(traj.states)
        else:
            g = jax.vmap(per)(traj.cond, traj.states)
        B = traj.actions.shape[0]
        live = jnp.concatenate([jnp.ones((B, 1), bool), traj.mask], axis=1)
        return ev._replace(log_flow=ev.log_flow + jnp.where(live, g, 0.0))

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, params, key, batch_size, log_reward_fn, reward_params=None, cond=None,
               explore: Optional[Exploration] = None, index_offset=0,
               init_states=None) -> Trajectories:
        """Trajectories from the target policy (or ``explore``), full policy pass per state."""
        return forward_rollout(self.env, self.policy, params, key, batch_size, log_reward_fn,
                               reward_params, cond, explore or Exploration(), index_offset,
                               init_states, block=self.rollout_block(batch_size))

    def sample_backward(self, params, key, terminal, log_reward_fn=None, reward_params=None,
                        cond=None, index_offset=0) -> Trajectories:
        B = jax.tree.leaves(terminal)[0].shape[0]
        return backward_rollout(self.env, self.policy, params, key, terminal, log_reward_fn,
                                reward_params, cond, index_offset, self.rollout_block(B),
                                self.eval_buckets if self.compact else None)

    def rollout_block(self, batch_size: int):
        """Rows per block of a compacted rollout of ``batch_size`` trajectories: an eighth of
        the batch, at least 16 (None: no compaction)."""
        return packing.block_rows(batch_size, 8) if self.compact else None

    def rollout(self, params, key, batch_size, log_reward_fn, reward_params=None, cond=None,
                index_offset=0, explore: Optional[Exploration] = None) -> Trajectories:
        """The training batch: the behaviour policy (``explore``, default the bundle's) with the
        cheap sampling pass (log_pb and log_flow of the result are not meaningful)."""
        explore = self.explore if explore is None else explore
        if self.engine is not None:
            return self.engine.rollout(self.env, self.policy, params, key, batch_size,
                                       log_reward_fn, reward_params, cond, explore, index_offset)
        return forward_rollout(self.env, self.policy, params, key, batch_size, log_reward_fn,
                               reward_params, cond, explore, index_offset, sampling_pass=True,
                               block=self.rollout_block(batch_size))

    # -- objective ----------------------------------------------------------------------------
    def terms(self, params, traj: Trajectories, reward_params=None) -> Terms:
        """Per-trajectory differentiable quantities of ``traj`` under ``params``
        (``reward_params`` only feed ``flow_offset``)."""
        B = traj.actions.shape[0]
        ctx = encode_batch(self.policy, params, traj.cond)  # once per trajectory
        lz = self._log_z_per_traj(params, ctx, B)
        if self.objective.edge_flows:  # flow matching: its own pass over every parent
            ev = self.evaluate(jax.lax.stop_gradient(params), traj)
            return Terms(ev, lz, self._flow_matching_terms(params, traj, ctx))
        ev = self.with_flow_offset(self.evaluate(params, traj, ctx), traj, reward_params)
        return Terms(ev, lz)

    def _log_z_per_traj(self, params, ctx, B):
        """float[B]: log Z of each trajectory's encoded condition (repeated when unconditional)."""
        return jnp.broadcast_to(self._log_z_of(params, ctx), (B,))

    def rollout_terms(self, params, key, batch_size, log_reward_fn, reward_params=None, cond=None,
                      index_offset=0):
        """``(terms, traj)`` as ``terms(params, rollout(...))`` gives them, in one pass: the
        training rollout (the behaviour policy, the same draws as ``rollout`` for the same key)
        with the full policy pass, differentiated through (the draws carry no gradient). No state
        is evaluated twice; the backward pass runs through the ``lax.scan`` of the rollout.
        ``traj``: no gradient."""
        B = batch_size
        ctx = encode_batch(self.policy, params, cond)
        if self.engine is not None:
            traj = self.engine.rollout(self.env, self.policy, params, key, B, log_reward_fn,
                                       reward_params, cond, self.explore, index_offset,
                                       differentiable=True, ctx=ctx)
        else:
            traj = forward_rollout(self.env, self.policy, params, key, B, log_reward_fn,
                                   reward_params, cond, self.explore, index_offset,
                                   differentiable=True, ctx=ctx,
                                   block=self.rollout_block(B))
        lz = self._log_z_per_traj(params, ctx, B)
        ev = Evaluation(traj.log_pf, traj.log_pb, traj.log_flow)
        ev = self.with_flow_offset(ev, traj, reward_params)
        return Terms(ev, lz), jax.lax.stop_gradient(traj)

    def value(self, terms: Terms, traj: Trajectories) -> jax.Array:
        """The objective on given terms; a function of the whole batch it is given."""
        if self.objective.edge_flows:
            return jnp.sum(terms.fm[:, 0]) / jnp.maximum(jnp.sum(terms.fm[:, 1]), 1.0)
        log_z = terms.log_z if traj.cond is not None else terms.log_z[0]
        if self.objective.needs_target:
            return self.objective(terms.ev, traj, log_z, target=terms.target)
        return self.objective(terms.ev, traj, log_z)

    def traj_loss(self, params, traj: Trajectories, reward_params=None) -> jax.Array:
        """The objective on given trajectories, differentiable in ``params``."""
        return self.value(self.terms(params, traj, reward_params), traj)

    def loss(self, params, key, batch_size, log_reward_fn, reward_params=None, cond=None,
             index_offset=0):
        """Sample with the behaviour policy, then evaluate the objective. Returns (loss, traj).

        The returned traj's log_pf, log_pb and log_flow are those of the evaluation pass.
        """
        traj = self.rollout(params, key, batch_size, log_reward_fn, reward_params, cond, index_offset)
        t = self.terms(params, traj, reward_params)
        sg = jax.lax.stop_gradient(t.ev)
        return self.value(t, traj), traj._replace(log_pf=sg.log_pf, log_pb=sg.log_pb,
                                                  log_flow=sg.log_flow)

    def _flow_matching_terms(self, params, traj: Trajectories, ctx) -> jax.Array:
        """float[B, 2]: per trajectory, sum of squared flow-matching residuals and their count.

        The forward logits are read as log edge flows, log F(s -> step(s, a)) = logits(s)[a]. For
        every visited state s' (s_1 .. s_L) the parents come from the environment's backward
        actions, and l(s') = (log sum_parents F(p -> s') - log[R(s') + sum_children F(s' -> s'')])^2
        (``losses.flow_matching_residuals``). One policy pass per (visited state, backward action).
        """
        env, pol = self.env, self.policy
        B, T = traj.actions.shape
        bacts = jnp.arange(env.n_bwd_actions)
        one = lambda o, c: pol.apply(params, o, c)

        def per_traj(states, c, log_r, L):
            bmask = jax.vmap(env.backward_mask)(states)  # [T+1, Ab]
            parents = jax.vmap(lambda s: jax.vmap(lambda b: env.backward_step(s, b))(bacts))(states)
            fa = jax.vmap(lambda s: jax.vmap(lambda b: env.forward_action(s, b))(bacts))(states)
            pobs = jax.vmap(jax.vmap(env.observe))(parents)
            p_logits = jax.vmap(jax.vmap(lambda o: one(o, c)))(pobs).fwd_logits  # [T+1, Ab, A]
            log_in = jnp.take_along_axis(p_logits, fa[..., None], axis=-1)[..., 0]
            out_logits = jax.vmap(lambda o: one(o, c))(jax.vmap(env.observe)(states)).fwd_logits
            fmask = jax.vmap(env.forward_mask)(states)
            term = jax.vmap(env.is_terminal)(states)
            lr = jnp.where(term, log_r, -jnp.inf)
            t = jnp.arange(T + 1)
            visited = (t >= 1) & (t <= L)
            sq = losses.flow_matching_residuals(log_in, bmask, out_logits, fmask, lr, visited)
            return jnp.stack([jnp.sum(jnp.where(visited, sq, 0.0)), jnp.sum(visited).astype(sq.dtype)])

        return jax.vmap(per_traj)(traj.states, ctx, traj.log_reward, traj.lengths)


# fold_in(step key, REPLAY_TAG): the draws from a replay buffer (far above any sample index)
REPLAY_TAG = 0x72706C79  # "rply"


class Replay(NamedTuple):
    """A replay buffer of training trajectories: ``trajs`` a ``Trajectories`` with leading axis N
    (the capacity), ``count`` int32[] how many are filled, ``pos`` int32[] where the next batch is
    written (a ring)."""

    trajs: Trajectories
    count: jax.Array
    pos: jax.Array


def replay_memory(gfn: GFlowNet, params, capacity: int, log_reward_fn, reward_params=None) -> Replay:
    """An empty ``Replay`` of ``capacity`` trajectories shaped as ``gfn.rollout``'s (unconditional):
    the memory to give ``loop.with_memory`` for ``sampler_update(..., replay=capacity)``."""
    one = jax.eval_shape(lambda p, rp: gfn.rollout(p, jax.random.PRNGKey(0), 1, log_reward_fn,
                                                   rp), params, reward_params)
    trajs = jax.tree.map(lambda a: jnp.zeros((capacity,) + a.shape[1:], a.dtype), one)
    return Replay(trajs, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _replayed(memory: Replay, traj: Trajectories, key, shard, b: int):
    """(this shard's b fresh trajectories followed by b drawn uniformly from the buffer, the buffer
    with the global fresh batch written in). Every device writes the same (gathered) batch, so the
    buffer stays replicated; draw i uses fold_in(fold_in(key, REPLAY_TAG), global index i)."""
    fresh = shard.gather(traj)
    B = fresh.actions.shape[0]
    N = memory.trajs.actions.shape[0]
    idx = (memory.pos + jnp.arange(B)) % N
    trajs = jax.tree.map(lambda m, x: m.at[idx].set(x.astype(m.dtype)), memory.trajs, fresh)
    count = jnp.minimum(memory.count + B, N)
    k = jax.random.fold_in(key, REPLAY_TAG)
    draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(k, i), (), 0, count))
    rows = draw(shard.offset(b) + jnp.arange(b))
    old = jax.tree.map(lambda m: m[rows], trajs)
    both = jax.tree.map(lambda a, o: jnp.concatenate([a, o.astype(a.dtype)]), traj, old)
    return both, Replay(trajs, count, ((memory.pos + B) % N).astype(jnp.int32))


def sampler_update(gfn: GFlowNet, tx, batch_size: int, log_reward_fn,
                   cond_fn=None, state_index=None, replay: int = 0):
    """The GFlowNet's side of ``gfnem_jax.loop``: an ``Update`` training ``gfn`` on-line.

    The reward parameters are the *other* side's parameters (the model; None in plain training):
    log R = log_reward_fn(model_params, cond, state).

    Args:
      tx: the optimizer of the policy parameters.
      batch_size: trajectories per step, global (split over the devices of a mesh).
      cond_fn: batch -> this shard's conditions (e.g. ``lambda b: b["x"]``); None = unconditional.
      state_index: optional state -> int index; adds "visited" (terminal indices [B]) to metrics.
      replay: 0, or the capacity N >= batch_size of a replay buffer: each step writes its
        batch_size fresh trajectories into the buffer (a ring) and trains on them together with
        batch_size trajectories drawn uniformly from it (the fresh ones included), 2 * batch_size
        in all. For objectives that take any behaviour policy (``balance``), unconditional, not
        ``one_pass``; ``tx`` must carry the buffer (``loop.with_memory(tx, replay_memory(...))``).
    Metrics: loss, mean_log_reward, mean_length, and log_z where the objective uses it (over the
    batch trained on, replayed trajectories included).

    An objective with ``needs_target`` (soft Q-learning) needs ``tx`` from ``loop.with_target``
    (``optim.policy_optimizer`` builds one): the target network is evaluated on each batch in
    ``prepare`` (no gradient) and handed to the objective.
    """
    from gfnem_jax.loop import Carrying, Update

    obj = gfn.objective
    uses_target = obj.needs_target
    if uses_target and not (isinstance(tx, Carrying) and tx.rate is not None):
        raise ValueError(f"loss {obj.name} with tau {obj.tau} keeps a target network: its "
                         f"optimizer must keep the copy (loop.with_target(tx, tau); "
                         f"optim.policy_optimizer does)")
    if replay:
        why = ("one_pass differentiates its own rollout" if gfn.one_pass else
               f"loss {obj.name} needs samples of the current policy" if not obj.balance else
               "it holds unconditional trajectories only" if cond_fn is not None else
               f"it must hold at least one batch of batch_size {batch_size}"
               if replay < batch_size else
               "the optimizer must carry it (loop.with_memory(tx, replay_memory(...)))"
               if not (isinstance(tx, Carrying) and tx.memory is not None) else None)
        if why:
            raise ValueError(f"replay {replay} is not allowed here: {why}; allowed: replay 0, or "
                             f">= batch_size with a loss that takes any behaviour policy")

    def prepare(params, model, batch, key, shard, target=None, memory=None):
        b = batch_size // shard.count
        cond = None if cond_fn is None else cond_fn(batch)
        if gfn.one_pass:  # the rollout happens in ``terms``, differentiated
            return key, cond, shard.offset(b), b
        traj = gfn.rollout(params, key, b, log_reward_fn, model, cond, shard.offset(b))
        if replay:
            traj, memory = _replayed(memory, traj, key, shard, b)
        aux = traj
        if uses_target:
            if target is None:
                raise ValueError(f"loss {obj.name} with tau {obj.tau} needs the target network, "
                                 f"which this run kind's update does not pass; allowed here: "
                                 f"tau 1")
            ev_t = gfn.evaluate(jax.lax.stop_gradient(target), traj)
            aux = traj, jax.lax.stop_gradient(gfn.with_flow_offset(ev_t, traj, model))
        return (aux, memory) if replay else aux

    def terms(params, model, traj):
        if gfn.one_pass:
            key, cond, offset, b = traj
            return gfn.rollout_terms(params, key, b, log_reward_fn, model, cond, offset)
        if uses_target:
            traj, ev_target = traj
            return gfn.terms(params, traj, model)._replace(target=ev_target)
        return gfn.terms(params, traj, model)

    def reduce(q, traj):
        if uses_target:
            traj = traj[0]
        loss = gfn.value(q, traj)
        m = {"mean_log_reward": jnp.mean(traj.log_reward),
             "mean_length": jnp.mean(traj.lengths.astype(jnp.float32))}
        if gfn.objective.needs_log_z:
            m["log_z"] = jnp.mean(q.log_z)
        if state_index is not None:
            m["visited"] = jax.vmap(state_index)(traj.terminal)
        return loss, m

    return Update(prepare, terms, reduce, tx, terms_aux=gfn.one_pass, uses_target=uses_target,
                  uses_memory=bool(replay))
