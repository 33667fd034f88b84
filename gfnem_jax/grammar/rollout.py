"""Shrinking root sets: the parse-tree rollout and evaluation with time buckets of root slots.

At step t every sentence has at most max(L - t, 1) roots (L = max_len), whatever its length, so
the policy can look at only the first K(t) = L - t0 root slots during a time bucket [t0, t1)
(``ParsePolicy.apply`` takes any K and pads its outputs back to the full action spaces). The
buckets are static: the rollout is one ``lax.scan`` per bucket, the evaluation one batched pass
per bucket, so sentences of every length still share one batch. ``n_buckets = 1`` is the
unshrunk computation (K = L throughout); ``n_buckets = L`` gives K(t) = L - t exactly.

Outputs have the core's types (``gfnem_jax.sampling.Trajectories`` / ``Evaluation``) and its
conventions: per-sample keys fold_in(key, index_offset + i), per-step keys fold_in(sample_key, t),
padded steps 0, the terminal state repeated after termination; each step is the core's
``sampling.forward_step`` after the policy pass on the shrunk observation. The differentiable pass
(``evaluate``, or the rollout itself with ``differentiable=True``) encodes each sentence once and
reuses the context for all its states.

Padding waste (``padding_waste``): the fraction of processed root slots that are not live roots
of a real state (slots beyond r, and states after termination).

``soft_values`` (the objectives of the RL view, ``objectives.SoftRL``): log_flow is the soft value
V(s) = log sum_{a legal} exp(fwd_logits(s)[a]) (``sampling.soft_value``, 0 at the terminal state)
instead of the flow head, in every pass of the engine, as the core's ``evaluation_of`` gives it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gfnem_jax import packing
from gfnem_jax.envs.base import masked_log_softmax
from gfnem_jax.grammar.env import ParseTree
from gfnem_jax.grammar.policy import ParsePolicy, shrink
from gfnem_jax.nets.policy import encode_batch
from gfnem_jax.sampling import (Evaluation, Exploration, Trajectories, evaluation_of,
                                forward_step, padded_evaluation, sample_keys, soft_value, visited)


def time_buckets(max_len: int, n_buckets: int):
    """Static buckets [(t0, t1, K)] covering state times 0..L-1 (T + 1 = L states), K = L - t0.

    Bucket edges split the L state times into ``n_buckets`` near-equal runs."""
    L = int(max_len)
    if not 1 <= int(n_buckets) <= L:
        raise ValueError(f"n_buckets must be in 1..max_len={L}, got {n_buckets}")
    edges = [round(i * L / n_buckets) for i in range(n_buckets + 1)]
    return [(t0, t1, L - t0) for t0, t1 in zip(edges[:-1], edges[1:]) if t1 > t0]


def slot_cost(max_len: int, n_buckets: int) -> int:
    """Root slots processed per trajectory by one pass over its T + 1 states."""
    return sum((t1 - t0) * K for t0, t1, K in time_buckets(max_len, n_buckets))


def padding_waste(lengths, max_len: int, n_buckets: int) -> float:
    """1 - live root slots / processed root slots for sentences of the given lengths (host).

    A sentence of n words has states t = 0..n-1 with n - t live roots: n (n + 1) / 2 live slots."""
    live = sum(int(n) * (int(n) + 1) // 2 for n in lengths)
    return 1.0 - live / (len(lengths) * slot_cost(max_len, n_buckets))


def packed_slot_cost(lengths, max_len: int, chunk: int, step: int = 4) -> int:
    """Root slots processed by ``evaluate_packed`` for sentences of the given lengths (host):
    the states with r >= 2 roots sorted by r, in chunks of ``chunk``, each on K(chunk) slots."""
    sizes = pack_sizes(max_len, step)
    rs = sorted((r for n in map(int, lengths) for r in range(2, n + 1)), reverse=True)
    return sum(chunk * next(K for K in sizes if K >= rs[i]) for i in range(0, len(rs), chunk))


def _scan_buckets(run_bucket, s0, buckets, T):
    """The time buckets' scans in turn from s0 (``run_bucket(s, t0, t1, K) -> (s, ys)``), their
    per-step outputs concatenated along time (leaves [T, ...])."""
    s, ys = s0, []
    for t0, t1, K in buckets:
        t1 = min(t1, T)
        if t1 > t0:
            s, y = run_bucket(s, t0, t1, K)
            ys.append(y)
    return jax.tree.map(lambda *a: jnp.concatenate(a), *ys)


def _forward_one(env: ParseTree, policy: ParsePolicy, params, explore, buckets, differentiable,
                 key, s0, ctx, soft_values=False):
    """One trajectory: at step t one policy pass on s_t's K(t) root slots, then the core's step
    (``sampling.forward_step``). The sampling pass (``apply_forward``) gives log P_F and log pi
    only; the ``differentiable`` one (``apply``) also log P_B of step t - 1 and log F(s_t) from
    the same pass, so each state s_t (t < T) gets exactly one pass. s_T has one root: P_B = 1
    there and its F is the reward's (set by the objectives), so it needs none.
    Returns states (leaves [T+1, ...]), actions, bwd_actions, mask, log_pf, log_pb, log_pi [T],
    log_flow [T+1] (log_pb and log_flow 0 for the sampling pass; ``soft_values``: log_flow the
    soft value of the forward logits)."""
    T = env.max_steps
    apply = policy.apply if differentiable else policy.apply_forward

    def run_bucket(s, t0, t1, K):
        def body(s, t):
            out = apply(params, shrink(env.observe(s), K), ctx)
            _, _, y = forward_step(env, explore, key, t, s, out.fwd_logits)
            if not differentiable:
                return y.state, (y,)
            flow = (soft_value(out.fwd_logits, env.forward_mask(s)) if soft_values
                    else out.log_flow)
            return y.state, (y, masked_log_softmax(out.bwd_logits, env.backward_mask(s)), flow)
        return jax.lax.scan(body, s, jnp.arange(t0, t1))

    y, *passes = _scan_buckets(run_bucket, s0, buckets, T)
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a]), s0, y.state)
    if not differentiable:
        lpb, flow = jnp.zeros_like(y.log_pf), jnp.zeros((T + 1,), y.log_pf.dtype)
    else:
        lpb_all, flow = passes
        # log P_B(s_t | s_{t+1}) from the pass on s_{t+1}; s_T is terminal (one root: P_B = 1)
        nxt_lpb = jnp.concatenate([lpb_all[1:], jnp.zeros_like(lpb_all[:1])])
        lpb = jnp.where(y.valid, jnp.take_along_axis(nxt_lpb, y.bwd_action[:, None], axis=1)[:, 0],
                        0.0)
        flow = jnp.concatenate([flow, jnp.zeros_like(flow[:1])])  # F(s_T): R, set by the loss
    return states, y.action, y.bwd_action, y.valid, y.log_pf, lpb, y.log_pi, flow


def _forward_packed(env: ParseTree, policy: ParsePolicy, params, explore, buckets,
                    differentiable, keys, s0, ctx, soft_values, block):
    """``_forward_one`` for all sentences at once (leaves [B, ...]), the policy run at step t only
    on the sentences not yet parsed (``packing.live_apply`` in blocks of ``block``): the same
    draws and values (to float rounding), no pass for a sentence after its last merge. Returns
    ``_forward_one``'s outputs with a leading B axis."""
    T = env.max_steps
    apply = policy.apply if differentiable else policy.apply_forward
    step = jax.vmap(lambda k, t, s, l: forward_step(env, explore, k, t, s, l),
                    (0, None, 0, 0))

    def run_bucket(s, t0, t1, K):
        def pass_(p, rows):
            obs, c = rows
            return jax.vmap(lambda o, cc: apply(p, o, cc))(obs, c)

        def body(s, t):
            live = ~jax.vmap(env.is_terminal)(s)
            obs = shrink(jax.vmap(env.observe)(s), K)
            out = packing.live_apply(pass_, params, (obs, ctx), live, block)
            _, _, y = step(keys, t, s, out.fwd_logits)
            if not differentiable:
                return y.state, (y,)
            fmask = jax.vmap(env.forward_mask)(s)
            flow = soft_value(out.fwd_logits, fmask) if soft_values else out.log_flow
            bmask = jax.vmap(env.backward_mask)(s)
            return y.state, (y, masked_log_softmax(out.bwd_logits, bmask), flow)
        return jax.lax.scan(body, s, jnp.arange(t0, t1))

    y, *passes = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1),
                              _scan_buckets(run_bucket, s0, buckets, T))
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[:, None], a], axis=1), s0, y.state)
    if not differentiable:
        B = y.log_pf.shape[0]
        lpb, flow = jnp.zeros_like(y.log_pf), jnp.zeros((B, T + 1), y.log_pf.dtype)
    else:
        lpb_all, flow = passes  # [B, T, A_b], [B, T]
        nxt_lpb = jnp.concatenate([lpb_all[:, 1:], jnp.zeros_like(lpb_all[:, :1])], axis=1)
        lpb = jnp.where(y.valid, jnp.take_along_axis(nxt_lpb, y.bwd_action[..., None],
                                                     axis=2)[..., 0], 0.0)
        flow = jnp.concatenate([flow, jnp.zeros_like(flow[:, :1])], axis=1)
    return states, y.action, y.bwd_action, y.valid, y.log_pf, lpb, y.log_pi, flow


def rollout(env: ParseTree, policy: ParsePolicy, params, key, cond, log_reward_fn=None,
            reward_params=None, explore: Exploration = Exploration(), n_buckets: int = 4,
            index_offset=0, differentiable: bool = False, ctx=None,
            soft_values: bool = False, block=None) -> Trajectories:
    """Sample one trajectory per sentence (cond leaves [B, ...]) with the behaviour policy.

    The sampling pass (``policy.apply_forward``) on K(t) root slots; log_pf is the target
    policy's log-prob of each step, log_pi the behaviour's; log_pb and log_flow are zeros (fill
    them with ``evaluate``). log_reward from ``log_reward_fn(reward_params, cond, state)`` if
    given (e.g. ``env.log_reward`` with the grammar), else zeros.

    differentiable: the full pass instead, once per visited state s_t (t < T); log_pf, log_pb and
      log_flow [B, T+1] (0 at s_T and padding) keep the gradient in ``params`` (the draws, log_pi
      and log_reward do not): the values ``evaluate`` gives without its second pass
      (``GFlowNet(..., one_pass=True).rollout_terms``). Otherwise no gradient flows.
    ctx: the encoded sentences (``encode_batch``) if the caller has them, else encoded here.
    soft_values: (differentiable) log_flow is the soft value of the forward logits.
    block: None, or rows per block < B: at each step the policy runs only on the sentences not
      yet parsed (``packing.live_apply``); the same draws and values to float rounding.
    """
    if not differentiable:
        params = jax.lax.stop_gradient(params)
    B = cond["length"].shape[0]
    keys = sample_keys(key, B, index_offset)
    if ctx is None:
        ctx = encode_batch(policy, params, cond)
    s0 = jax.vmap(env.init)(cond)
    buckets = time_buckets(env.max_len, n_buckets)
    if block is None or block >= B:
        f = lambda k, s, c: _forward_one(env, policy, params, explore, buckets, differentiable, k,
                                         s, c, soft_values)
        parts = jax.vmap(f)(keys, s0, ctx)
    else:
        parts = _forward_packed(env, policy, params, explore, buckets, differentiable, keys, s0,
                                ctx, soft_values, block)
    states, acts, bacts, mask, lpf, lpb, lpi, flow = parts
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    terminal = jax.tree.map(lambda a: a[:, -1], states)
    if log_reward_fn is None:
        log_reward = jnp.zeros((B,), lpf.dtype)
    else:
        log_reward = jax.vmap(lambda c, s: log_reward_fn(reward_params, c, s))(cond, terminal)
    if differentiable:
        flow = jnp.where(visited(mask), flow, 0.0)
    return Trajectories(states, acts, bacts, mask, lpf, lpb, lpi, flow, lengths, terminal,
                        log_reward, cond)


def evaluate(env: ParseTree, policy: ParsePolicy, params, traj: Trajectories,
             n_buckets: int = 4, ctx=None, soft_values: bool = False) -> Evaluation:
    """Differentiable log P_F, log P_B [B, T] and log F [B, T+1] (network part) of ``traj``.

    One batched pass per time bucket over the B states of its times, each on K root slots;
    ``ctx`` (the encoded sentences, ``encode_batch``) is computed here when not given.
    soft_values: log F is the soft value of the forward logits (``sampling.evaluation_of``).
    """
    if ctx is None:
        ctx = encode_batch(policy, params, traj.cond)
    obs = jax.vmap(jax.vmap(env.observe))(traj.states)
    per_traj = jax.vmap(lambda o, c: jax.vmap(lambda oo: policy.apply(params, oo, c))(o))
    outs = []
    for t0, t1, K in time_buckets(env.max_len, n_buckets):
        seg = jax.tree.map(lambda a: a[:, t0:t1], shrink(obs, K))
        outs.append(per_traj(seg, ctx))
    return evaluation_of(env, jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs), traj,
                         soft_values)


def pack_sizes(max_len: int, step: int = 4):
    """The static root-slot counts K of ``evaluate_packed``'s branches: multiples of ``step``
    up to max_len (max_len itself the last), covering every root count r in 2..max_len."""
    L, step = int(max_len), int(step)
    if step < 1:
        raise ValueError(f"slot step must be >= 1, got {step}")
    return sorted({min(L, -(-r // step) * step) for r in range(2, L + 1)})


def evaluate_packed(env: ParseTree, policy: ParsePolicy, params, traj: Trajectories,
                    chunk: int = 32, step: int = 4, ctx=None,
                    soft_values: bool = False) -> Evaluation:
    """``evaluate`` with the states packed across sentences: the same Evaluation, fewer FLOPs.

    Only states with r >= 2 roots need the network (the terminal state has P_B = 1 and its flow
    is the reward; states after termination are padding): a sentence of n words has n - 1 of
    them, with n, n-1, ..., 2 roots. All B (T + 1) states are sorted by their root count r
    (descending) and cut into chunks of ``chunk`` states; each chunk runs ``policy.apply`` on
    K(chunk) root slots, K the smallest of ``pack_sizes(L, step)`` >= the chunk's largest r
    (``lax.switch`` inside ``lax.map``: one compiled branch per K, empty chunks skipped).
    Processed slots drop from B * sum_t K(t) to about sum over states of r, whatever the mix of
    lengths. log_flow is 0 at states that need no pass (the objectives replace the terminal
    flow by log R). Outputs: log P_F, log P_B [B, T] and log F [B, T+1], as ``evaluate``
    (``soft_values``: log F the soft value of the forward logits, 0 at the terminal state too).
    """
    B, T = traj.actions.shape
    S, L = T + 1, env.max_len
    if ctx is None:
        ctx = encode_batch(policy, params, traj.cond)
    flat = lambda a: a.reshape((B * S,) + a.shape[2:])
    states = jax.tree.map(flat, traj.states)
    r = jnp.where(states.r >= 2, states.r, 0)
    N = B * S
    n_chunks = -(-N // chunk)
    order = jnp.argsort(-r, stable=True)
    order = jnp.concatenate([order, jnp.full((n_chunks * chunk - N,), N, order.dtype)])
    pad1 = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])
    r_p = pad1(r)
    # the action taken from state t and the backward action into state t (step t - 1)
    zero_col = jnp.zeros((B, 1), jnp.int32)
    act = pad1(flat(jnp.concatenate([traj.actions.astype(jnp.int32), zero_col], axis=1)))
    bact = pad1(flat(jnp.concatenate([zero_col, traj.bwd_actions.astype(jnp.int32)], axis=1)))
    # the padding entry (index N) copies a real state, so its (discarded) pass stays finite
    states_p = jax.tree.map(lambda a: jnp.concatenate([a, a[:1]]), states)
    sizes = pack_sizes(L, step)

    def run(idx):
        s = jax.tree.map(lambda a: a[idx], states_p)
        c = jax.tree.map(lambda a: a[jnp.minimum(idx, N - 1) // S], ctx)
        obs = jax.vmap(env.observe)(s)
        fmask = jax.vmap(env.forward_mask)(s)
        bmask = jax.vmap(env.backward_mask)(s)
        a, b = act[idx], bact[idx]

        def branch(K):
            # rematerialised: under reverse-mode AD a switch keeps the union of its branches'
            # residuals (zeros for the branches not taken), which costs more than recomputing
            @jax.checkpoint
            def f(p, obs, c, a, b, fmask, bmask):
                out = jax.vmap(lambda o, cc: policy.apply(p, o, cc))(shrink(obs, K), c)
                lpf = jnp.take_along_axis(masked_log_softmax(out.fwd_logits, fmask),
                                          a[:, None], axis=1)[:, 0]
                lpb = jnp.take_along_axis(masked_log_softmax(out.bwd_logits, bmask),
                                          b[:, None], axis=1)[:, 0]
                flow = soft_value(out.fwd_logits, fmask) if soft_values else out.log_flow
                return jnp.stack([lpf, lpb, flow], axis=1)
            return lambda _: f(params, obs, c, a, b, fmask, bmask)

        skip = lambda _: jnp.zeros((idx.shape[0], 3), jnp.float32)
        top = r_p[idx[0]]  # sorted: the chunk's largest root count
        k = jnp.where(top < 2, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), top))
        return jax.lax.switch(k, [skip] + [branch(K) for K in sizes], None)

    vals = jax.lax.map(run, order.reshape(n_chunks, chunk))
    vals = jnp.zeros((N + 1, 3), vals.dtype).at[order].add(vals.reshape(-1, 3))[:N]
    vals = jnp.where((r > 0)[:, None], vals, 0.0).reshape(B, S, 3)
    return padded_evaluation(vals[:, :-1, 0], vals[:, 1:, 1], vals[..., 2], traj.mask)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The shrinking-root-set engine of a ``gfnem_jax.gflownet.GFlowNet`` over ``ParseTree``
    (``GFlowNet(env, policy, objective, engine=Buckets(4))``): its training rollout is
    ``rollout`` and its differentiable pass ``evaluate`` with ``n_buckets`` time buckets, or
    ``evaluate_packed`` in chunks of ``pack`` states when pack > 0 (same values, fewer FLOPs when
    sentence lengths differ). With ``GFlowNet(..., one_pass=True)`` the rollout itself is
    differentiated (``rollout(..., differentiable=True)``) and there is no second pass.
    ``soft_values``: every pass gives the soft values of the forward logits as log F (the
    objectives of the RL view; ``GFlowNet`` checks that it agrees with its objective)."""

    n_buckets: int = 4
    pack: int = 0
    soft_values: bool = False
    # the rollout runs the policy only on sentences not yet parsed, in blocks of an eighth of
    # the batch (``packing.live_apply``; at least 16 sentences); False: every sentence every step
    compact: bool = False

    def rollout(self, env, policy, params, key, batch_size, log_reward_fn, reward_params, cond,
                explore, index_offset, differentiable=False, ctx=None):
        if cond is None or cond["length"].shape[0] != batch_size:
            raise ValueError("Buckets.rollout needs one sentence (cond row) per trajectory")
        block = packing.block_rows(batch_size, 8) if self.compact else None
        return rollout(env, policy, params, key, cond, log_reward_fn, reward_params, explore,
                       self.n_buckets, index_offset, differentiable, ctx, self.soft_values, block)

    def evaluate(self, env, policy, params, traj, ctx):
        if self.pack:
            return evaluate_packed(env, policy, params, traj, self.pack, ctx=ctx,
                                   soft_values=self.soft_values)
        return evaluate(env, policy, params, traj, self.n_buckets, ctx, self.soft_values)
