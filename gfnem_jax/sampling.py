"""Forward and backward rollouts: one ``lax.scan`` over ``max_steps``, vmapped over trajectories.

Every trajectory is written for one state and batched by ``jax.vmap`` here, and only here.
Per-sample keys are ``fold_in(key, global_index)`` so the samples do not depend on how a batch is
split across devices; per-step keys are ``fold_in(sample_key, t)``.

A ``Trajectories`` pytree (B trajectories, T = env.max_steps):
  states      pytree, leaves [B, T+1, ...]; after termination the terminal state is repeated.
  actions     int32[B, T] forward action taken from states[:, t] (0 where padded).
  bwd_actions int32[B, T] backward action undoing it.
  mask        bool[B, T]  True for real steps.
  log_pf      float[B, T] log P_F of the step under the *target* policy (0 where padded).
  log_pb      float[B, T] log P_B(s_t | s_{t+1}) (0 where padded).
  log_pi      float[B, T] log-prob under the *behaviour* policy that drew the step
              (tempered / eps-uniform for forward rollouts, P_B for backward ones).
  log_flow    float[B, T+1] the network's log F(s_t) (0 where padded).
  lengths     int32[B] number of real steps.
  terminal    pytree, leaves [B, ...]: the final states.
  log_reward  float[B] log R of the final states.
  cond        the conditions (any pytree, leaves [B, ...]) or None.
Rollout values carry no gradient; ``evaluate`` recomputes log_pf, log_pb and log_flow
differentiably in one batched pass over all B*(T+1) states (or a ``differentiable`` forward
rollout keeps the gradient of its own pass, and no second pass is needed).

Every forward rollout steps through ``forward_step`` (the draw and the environment's step, given
the state's forward logits) and every evaluation ends in ``evaluation_of`` (log-softmax over the
legal actions, gathered, padded): the core's here and the parse-tree engine's
(``gfnem_jax.grammar.rollout``, which shrinks the observation per time bucket) alike.

The policy is any ``gfnem_jax.nets.policy.Policy``. Its ``encode_cond`` runs once per trajectory
(vmapped over the batch), never once per state: each state's pass gets the encoded context.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gfnem_jax import packing
from gfnem_jax.envs.base import NEG_INF, Environment, masked_log_softmax
from gfnem_jax.nets.policy import Policy, encode_batch

ApplyFn = Callable[[Any, Any, Any], Any]  # (params, obs, ctx) -> PolicyOutput, one state
LogRewardFn = Callable[[Any, Any, Any], jax.Array]  # (reward_params, cond, state) -> scalar


class Trajectories(NamedTuple):
    states: Any
    actions: jax.Array
    bwd_actions: jax.Array
    mask: jax.Array
    log_pf: jax.Array
    log_pb: jax.Array
    log_pi: jax.Array
    log_flow: jax.Array
    lengths: jax.Array
    terminal: Any
    log_reward: jax.Array
    cond: Any


class Exploration(NamedTuple):
    """Behaviour policy: pi = (1 - epsilon) * softmax(logits / temperature) + epsilon * uniform(legal)."""

    temperature: float = 1.0
    epsilon: float = 0.0


def behaviour_log_probs(logits, mask, explore: Exploration):
    """log pi over actions for the tempered / eps-uniform behaviour policy ([..., A])."""
    logp_t = masked_log_softmax(logits / explore.temperature, mask)
    n_legal = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)
    log_unif = jnp.where(mask, -jnp.log(n_legal.astype(logits.dtype)), logp_t)
    eps = jnp.asarray(explore.epsilon, logits.dtype)
    mixed = jnp.logaddexp(jnp.log1p(-eps) + logp_t, jnp.log(eps) + log_unif)
    out = jnp.where(eps > 0, mixed, logp_t)
    return jnp.where(mask, out, logp_t)


def sample_keys(key, batch_size: int, offset=0):
    """Per-sample keys fold_in(key, offset + i), i < batch_size."""
    idx = jnp.arange(batch_size) + offset
    return jax.vmap(jax.random.fold_in, (None, 0))(key, idx)


def _gather_time(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


class Step(NamedTuple):
    """One forward step of one trajectory, 0 where padded (the trajectory had already ended)."""

    state: Any           # the next state (the current one, repeated, once terminal)
    action: jax.Array    # int32[] the forward action drawn
    bwd_action: jax.Array  # int32[] the backward action undoing it
    valid: jax.Array     # bool[] a real step
    log_pf: jax.Array    # float[] log P_F(action | s) under the target policy
    log_pi: jax.Array    # float[] its log-prob under the behaviour policy


def forward_step(env: Environment, explore: Exploration, key, t, s, fwd_logits):
    """Draw the step from state ``s`` at time t, given its forward logits [A]: the one step body
    of every forward rollout (the core's below, the parse-tree engine's ``grammar.rollout``).

    The draw (key fold_in(key, t)) uses the behaviour policy and carries no gradient; log P_F
    keeps the gradient of ``fwd_logits``. Returns ``(s_next, b, step)``: ``s_next`` =
    env.step(s, a) and ``b`` its backward action before padding (for a pass on the next state),
    ``step`` the ``Step`` with padding applied.
    """
    done = env.is_terminal(s)
    fmask = env.forward_mask(s)
    logp = masked_log_softmax(fwd_logits, fmask)
    logpi = behaviour_log_probs(jax.lax.stop_gradient(fwd_logits), fmask, explore)
    a = jax.random.categorical(jax.random.fold_in(key, t), logpi).astype(jnp.int32)
    s_next = env.step(s, a)
    b = env.backward_action(s, a)
    valid = ~done
    kept = jax.tree.map(lambda n, o: jnp.where(valid, n, o), s_next, s)
    zero = jnp.zeros((), logp.dtype)
    return s_next, b, Step(kept, jnp.where(valid, a, 0), jnp.where(valid, b, 0), valid,
                           jnp.where(valid, logp[a], zero), jnp.where(valid, logpi[a], zero))


def _forward_one(env: Environment, apply_fn, params, explore, key, s0, ctx):
    """One trajectory; the pass on s_{t+1} is carried to step t + 1 (T + 1 passes in all)."""
    T = env.max_steps
    out0 = apply_fn(params, env.observe(s0), ctx)

    def body(carry, t):
        s, out = carry
        s_next, b, y = forward_step(env, explore, key, t, s, out.fwd_logits)
        out_next = apply_fn(params, env.observe(s_next), ctx)
        logpb = masked_log_softmax(out_next.bwd_logits, env.backward_mask(s_next))[b]
        out_next = jax.tree.map(lambda n, o: jnp.where(y.valid, n, o), out_next, out)
        zero = jnp.zeros((), y.log_pf.dtype)
        return (y.state, out_next), (y, jnp.where(y.valid, logpb, zero),
                                     jnp.where(y.valid, out_next.log_flow, zero))

    (_, _), (y, lpb, lflow) = jax.lax.scan(body, (s0, out0), jnp.arange(T))
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a]), s0, y.state)
    log_flow = jnp.concatenate([out0.log_flow[None], lflow])
    return states, y.action, y.bwd_action, y.valid, y.log_pf, lpb, y.log_pi, log_flow


def _batch_pass(apply_fn):
    """(params, (obs, ctx) rows [k, ...]) -> the policy's outputs on the k rows."""
    def run(params, rows):
        obs, ctx = rows
        return jax.vmap(apply_fn, (None, 0, None if ctx is None else 0))(params, obs, ctx)
    return run


def _forward_packed(env: Environment, apply_fn, params, explore, keys, s0, ctx, block,
                    sampling_pass):
    """All trajectories at once (leaves [B, ...]), the policy run only on the states that need a
    pass (``packing.live_apply``): after step t, the trajectories still running (and, for the
    full pass, those that just ended: their terminal state's P_B and flow). The same draws and
    values as ``_forward_one`` under ``vmap`` (to float rounding); returns its outputs [B, ...]."""
    T = env.max_steps
    vobs = jax.vmap(env.observe)
    run = _batch_pass(apply_fn)
    out0 = run(params, (vobs(s0), ctx))

    def body(carry, t):
        s, out = carry
        step = lambda k, s_, l: forward_step(env, explore, k, t, s_, l)
        s_next, b, y = jax.vmap(step)(keys, s, out.fwd_logits)
        live = y.valid
        if sampling_pass:  # only forward logits are used: none needed at a terminal state
            live = live & ~jax.vmap(env.is_terminal)(s_next)
        out_next = packing.live_apply(run, params, (vobs(s_next), ctx), live, block)
        bmask = jax.vmap(env.backward_mask)(s_next)
        logpb = jnp.take_along_axis(masked_log_softmax(out_next.bwd_logits, bmask), b[:, None],
                                    axis=-1)[:, 0]
        keep = lambda n, o: jnp.where(y.valid.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
        out_next = jax.tree.map(keep, out_next, out)
        zero = jnp.zeros((), y.log_pf.dtype)
        return (y.state, out_next), (y, jnp.where(y.valid, logpb, zero),
                                     jnp.where(y.valid, out_next.log_flow, zero))

    (_, _), (y, lpb, lflow) = jax.lax.scan(body, (s0, out0), jnp.arange(T))
    tb = lambda a: jnp.swapaxes(a, 0, 1)  # [T, B, ...] -> [B, T, ...]
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[:, None], tb(a)], axis=1), s0, y.state)
    log_flow = jnp.concatenate([out0.log_flow[:, None], tb(lflow)], axis=1)
    return (states, tb(y.action), tb(y.bwd_action), tb(y.valid), tb(y.log_pf), tb(lpb),
            tb(y.log_pi), log_flow)


def forward_rollout(env: Environment, policy: Policy, params, key, batch_size: int,
                    log_reward_fn: LogRewardFn, reward_params=None, cond=None,
                    explore: Exploration = Exploration(), index_offset=0,
                    init_states=None, sampling_pass: bool = False,
                    differentiable: bool = False, ctx=None, block=None) -> Trajectories:
    """Sample ``batch_size`` complete trajectories from s_0 with the behaviour policy.

    Args:
      env: the environment (static); policy: the ``Policy`` (static); params: its parameters
        (no gradient flows through the rollout).
      key: PRNG key of this step; per-sample keys are fold_in(key, index_offset + i).
      batch_size: B.
      log_reward_fn: (reward_params, cond, state) -> log R, for one terminal state.
      cond: None, or conditions (any pytree) with leading axis B, encoded once per trajectory.
      explore: tempering / eps-uniform behaviour policy; log_pi records its log-probs.
      index_offset: global index of the first sample (for device-split batches).
      init_states: None (start at env.init(cond)), or a batch of start states [B, ...] (local
        search continues partial trajectories; log_pf etc. then cover only the steps taken).
      sampling_pass: use ``policy.apply_forward`` (only the forward logits are meaningful:
        log_pb and log_flow of the result are then not) -- the cheap pass before ``evaluate``.
      differentiable: log_pf, log_pb and log_flow carry the gradient in ``params`` (the full pass;
        the draws and log_pi do not): the values ``evaluate`` would give, without its second pass
        over the states (``GFlowNet.rollout_terms``).
      ctx: the encoded conditions, if the caller already has them (else encoded here).
      block: None (every trajectory is stepped through the policy at every step), or a number
        of rows < batch_size (``packing.block_rows``): after each step the policy runs only on
        the trajectories that need it, in blocks of that many (compute on real states; the same
        draws and values to float rounding).
    """
    if differentiable and (sampling_pass or init_states is not None):
        raise ValueError("a differentiable rollout is a full pass from s_0 (sampling_pass=False, "
                         "init_states=None)")
    if not differentiable:
        params = jax.lax.stop_gradient(params)
    keys = sample_keys(key, batch_size, index_offset)
    apply_fn = policy.apply_forward if sampling_pass else policy.apply
    if ctx is None:
        ctx = encode_batch(policy, params, cond)
    if init_states is not None:
        s0 = init_states
    elif cond is None:
        s0 = jax.vmap(lambda _: env.init(None))(jnp.arange(batch_size))
    else:
        s0 = jax.vmap(env.init)(cond)
    if block is None or block >= batch_size:  # nothing to compact
        f = lambda k, s, c: _forward_one(env, apply_fn, params, explore, k, s, c)
        parts = jax.vmap(f)(keys, s0, ctx)
    else:
        parts = _forward_packed(env, apply_fn, params, explore, keys, s0, ctx, block,
                                sampling_pass)
    states, acts, bacts, mask, lpf, lpb, lpi, log_flow = parts
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    terminal = jax.tree.map(lambda a: a[:, -1], states)
    log_reward = _log_rewards(log_reward_fn, reward_params, cond, terminal)
    return Trajectories(states, acts, bacts, mask, lpf, lpb, lpi, log_flow, lengths, terminal,
                        log_reward, cond)


def _log_rewards(log_reward_fn, reward_params, cond, terminal):
    return jax.vmap(lambda c, s: log_reward_fn(reward_params, c, s))(cond, terminal)


def _backward_one(env: Environment, apply_fn, params, key, x, ctx):
    T = env.max_steps

    def body(s, t):
        done = env.is_initial(s)
        out = apply_fn(params, env.observe(s), ctx)
        bmask = env.backward_mask(s)
        logpb = masked_log_softmax(out.bwd_logits, bmask)
        b = jax.random.categorical(jax.random.fold_in(key, t), logpb).astype(jnp.int32)
        prev = env.backward_step(s, b)
        a = env.forward_action(s, b)
        valid = ~done
        prev = jax.tree.map(lambda n, o: jnp.where(valid, n, o), prev, s)
        return prev, (s, jnp.where(valid, a, 0), jnp.where(valid, b, 0), valid,
                      jnp.where(valid, logpb[b], 0.0))

    final, (bstates, acts, bacts, valid, lpb) = jax.lax.scan(body, x, jnp.arange(T))
    return _to_forward_order(bstates, final, acts, bacts, valid, lpb)


def _backward_packed(env: Environment, apply_fn, params, keys, x, ctx, block):
    """``_backward_one`` for all trajectories at once (leaves [B, ...]), the policy run only on
    the states not yet back at s_0 (``packing.live_apply``); the same outputs, to float rounding.
    """
    T = env.max_steps
    vobs = jax.vmap(env.observe)
    run = _batch_pass(apply_fn)

    def body(s, t):
        valid = ~jax.vmap(env.is_initial)(s)
        out = packing.live_apply(run, params, (vobs(s), ctx), valid, block)
        logpb = masked_log_softmax(out.bwd_logits, jax.vmap(env.backward_mask)(s))
        draw = lambda k, l: jax.random.categorical(jax.random.fold_in(k, t), l).astype(jnp.int32)
        b = jax.vmap(draw)(keys, logpb)
        prev = jax.vmap(env.backward_step)(s, b)
        a = jax.vmap(env.forward_action)(s, b)
        keep = lambda n, o: jnp.where(valid.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
        prev = jax.tree.map(keep, prev, s)
        lpb = jnp.take_along_axis(logpb, b[:, None], axis=-1)[:, 0]
        return prev, (s, jnp.where(valid, a, 0), jnp.where(valid, b, 0), valid,
                      jnp.where(valid, lpb, 0.0))

    final, parts = jax.lax.scan(body, x, jnp.arange(T))
    tb = lambda a: jnp.swapaxes(a, 0, 1)  # [T, B, ...] -> [B, T, ...]
    bstates, acts, bacts, valid, lpb = jax.tree.map(tb, parts)
    return jax.vmap(_to_forward_order)(bstates, final, acts, bacts, valid, lpb)


def _to_forward_order(bstates, final, acts, bacts, valid, lpb):
    """One trajectory drawn backwards (leaves [T, ...] in backward order, ``final`` the state after
    T backward steps) in forward order: (states [T+1], actions, bwd_actions, mask, log_pb, L)."""
    T = acts.shape[0]
    # bstates[k] = state after k backward steps (k < T); append the one after T steps.
    all_b = jax.tree.map(lambda a, last: jnp.concatenate([a, last[None]]), bstates, final)
    L = jnp.sum(valid).astype(jnp.int32)
    t = jnp.arange(T + 1)
    # forward time t <-> backward index L - t (t <= L); pad with the terminal state (index 0).
    s_idx = jnp.where(t <= L, L - t, 0)
    states = _gather_time(all_b, s_idx)
    # forward step t (t < L) is backward step k = L - 1 - t.
    tt = jnp.arange(T)
    k = jnp.clip(L - 1 - tt, 0, T - 1)
    fmask = tt < L
    return (states, jnp.where(fmask, acts[k], 0), jnp.where(fmask, bacts[k], 0), fmask,
            jnp.where(fmask, lpb[k], 0.0), L)


def backward_rollout(env: Environment, policy: Policy, params, key, terminal,
                     log_reward_fn: Optional[LogRewardFn] = None, reward_params=None, cond=None,
                     index_offset=0, block=None, buckets=None) -> Trajectories:
    """Sample trajectories backwards from given terminal states with P_B, returned in forward order.

    Args:
      terminal: pytree of terminal states with leading axis B (data, replay, sleep phase).
      log_reward_fn: if given, fills ``log_reward``; otherwise it is zeros.
      block: as ``forward_rollout``'s (the policy runs only on states not yet at s_0);
      buckets: as ``evaluate``'s, for the pass that fills log_pf and log_flow.
    Returns Trajectories with log_pb from the sampling pass, log_pi = log_pb (the behaviour is
    P_B(tau | x)), and log_pf / log_flow filled by ``evaluate`` (no gradient).
    """
    params = jax.lax.stop_gradient(params)
    B = jax.tree.leaves(terminal)[0].shape[0]
    keys = sample_keys(key, B, index_offset)
    ctx = encode_batch(policy, params, cond)
    if block is None or block >= B:  # nothing to compact
        one = lambda k, x, c: _backward_one(env, policy.apply, params, k, x, c)
        parts = jax.vmap(one)(keys, terminal, ctx)
    else:
        parts = _backward_packed(env, policy.apply, params, keys, terminal, ctx, block)
    states, acts, bacts, mask, lpb, L = parts
    if log_reward_fn is None:
        log_reward = jnp.zeros((B,), jnp.float32)
    else:
        log_reward = _log_rewards(log_reward_fn, reward_params, cond, terminal)
    traj = Trajectories(states, acts, bacts, mask, jnp.zeros_like(lpb), lpb, lpb,
                        jnp.zeros(mask.shape[:1] + (mask.shape[1] + 1,), lpb.dtype), L,
                        terminal, log_reward, cond)
    ev = evaluate(env, policy, params, traj, buckets, ctx)
    return traj._replace(log_pf=ev.log_pf, log_flow=ev.log_flow)


class Evaluation(NamedTuple):
    log_pf: jax.Array  # [B, T]
    log_pb: jax.Array  # [B, T]
    log_flow: jax.Array  # [B, T+1]


def visited(mask):
    """bool[B, T+1] from the step mask bool[B, T]: the states a trajectory visits (s_0 and the
    state after each real step)."""
    return jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)


def padded_evaluation(log_pf, log_pb, log_flow, mask) -> Evaluation:
    """The ``Evaluation`` of per-step log P_F, log P_B [B, T] and per-state log F [B, T+1], exactly
    0 at padding (steps where ``mask`` bool[B, T] is False, states not ``visited``)."""
    return Evaluation(jnp.where(mask, log_pf, 0.0), jnp.where(mask, log_pb, 0.0),
                      jnp.where(visited(mask), log_flow, 0.0))


def soft_value(logits, mask):
    """log sum_{a legal} exp(logits[a]) over the last axis ([..., A] -> [...]); 0 where no action
    is legal (terminal states). The soft value V(s) of Q-values read as forward logits: P_F =
    softmax of the masked logits = exp(Q(s, a) - V(s))."""
    legal = jnp.any(mask, axis=-1)
    z = jnp.where(mask, logits, jnp.asarray(NEG_INF, logits.dtype))
    return jnp.where(legal, jax.nn.logsumexp(z, axis=-1), 0.0)


def evaluation_of(env: Environment, out, traj: Trajectories,
                  soft_values: bool = False) -> Evaluation:
    """The ``Evaluation`` of ``traj`` from the policy's outputs on all its states (``out`` leaves
    [B, T+1, ...]): the legal actions' log-softmax, gathered at the actions taken (log P_F from
    s_t, log P_B from s_{t+1}), padded with zeros. ``soft_values``: log_flow is the soft value
    of the forward logits, ``soft_value(fwd_logits, forward_mask)``, instead of the flow head
    (the objectives of the RL view, whose Q-values are the forward logits)."""
    fmask = jax.vmap(jax.vmap(env.forward_mask))(traj.states)
    bmask = jax.vmap(jax.vmap(env.backward_mask))(traj.states)
    logpf_all = masked_log_softmax(out.fwd_logits, fmask)
    logpb_all = masked_log_softmax(out.bwd_logits, bmask)
    lpf = jnp.take_along_axis(logpf_all[:, :-1], traj.actions[..., None], axis=-1)[..., 0]
    lpb = jnp.take_along_axis(logpb_all[:, 1:], traj.bwd_actions[..., None], axis=-1)[..., 0]
    log_flow = soft_value(out.fwd_logits, fmask) if soft_values else out.log_flow
    return padded_evaluation(lpf, lpb, log_flow, traj.mask)


# The training pass's smallest block (rows): below it, a block's per-operation overhead costs more
# than the padding it skips (benchmarks/compact_ab.py, HyperGrid batch 16-256 on a 2-core CPU).
MIN_EVAL_BLOCK = 512


def _apply_all(policy: Policy, params, obs, ctx, lengths, T, buckets):
    """The policy on the B*(T+1) states (obs leaves [B, T+1, ...]; ctx leaves [B, ...]).

    One flat pass over the rows (a 2-D matmul for vector observations), the context of trajectory
    b shared by its T+1 rows (gathered, not re-encoded). With ``buckets`` (increasing fractions of
    B*(T+1), the last 1.0; equal steps, as (1/P, 2/P, ..., 1)) only the real states (t <= L_b;
    the rest is padding after termination) are computed, in blocks of the first fraction's rows
    (``packing.live_apply``; zeros at padding): the work of the smallest bucket that holds them.
    A block has at least ``MIN_EVAL_BLOCK`` rows (all N when fewer).
    Outputs have leaves [B, T+1, ...] either way.
    """
    B = lengths.shape[0]
    N = B * (T + 1)
    flat = jax.tree.map(lambda a: a.reshape((N,) + a.shape[2:]), obs)
    crow = None if ctx is None else jax.tree.map(lambda c: jnp.repeat(c, T + 1, axis=0), ctx)
    valid = (jnp.arange(T + 1)[None, :] <= lengths[:, None]).reshape(N)
    block = max(1, int(-(-buckets[0] * N // 1))) if buckets else N
    block = min(N, max(block, MIN_EVAL_BLOCK))
    out = packing.live_apply(_batch_pass(policy.apply), params, (flat, crow), valid, block)
    return jax.tree.map(lambda o: o.reshape((B, T + 1) + o.shape[1:]), out)


def evaluate(env: Environment, policy: Policy, params, traj: Trajectories,
             buckets=None, ctx=None, soft_values: bool = False) -> Evaluation:
    """Differentiable log P_F, log P_B per step and log F per state of given trajectories.

    One batched policy pass over the B*(T+1) states, the condition encoded once per trajectory;
    padded entries are exactly 0.
    buckets: optional increasing fractions ending in 1.0 (e.g. (0.25, 0.5, 0.75, 1.0)): pack the
      real (non-padding) states into the smallest bucket that holds them (see ``_apply_all``).
    ctx: the encoded conditions if the caller already has them (differentiable in params), else
      they are encoded here.
    soft_values: log_flow is the soft value of the forward logits (``evaluation_of``).
    """
    T = traj.actions.shape[1]
    obs = jax.vmap(jax.vmap(env.observe))(traj.states)
    if ctx is None:
        ctx = encode_batch(policy, params, traj.cond)
    return evaluation_of(env, _apply_all(policy, params, obs, ctx, traj.lengths, T, buckets), traj,
                         soft_values)
