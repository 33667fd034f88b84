"""Shrinking root sets: the parse-tree rollout and evaluation with time buckets of root slots.

At step t every sentence has at most max(L - t, 1) roots (L = max_len), whatever its length, so
the policy can look at only the first K(t) = L - t0 root slots during a time bucket [t0, t1)
(``ParsePolicy.apply`` takes any K and pads its outputs back to the full action spaces). The
buckets are static: the rollout is one ``lax.scan`` per bucket, the evaluation one batched pass
per bucket, so sentences of every length still share one batch. ``n_buckets = 1`` is the
unshrunk computation (K = L throughout); ``n_buckets = L`` gives K(t) = L - t exactly.

Outputs have the core's types (``gfnem_jax.sampling.Trajectories`` / ``Evaluation``) and its
conventions: per-sample keys fold_in(key, index_offset + i), per-step keys fold_in(sample_key, t),
padded steps 0, the terminal state repeated after termination. The differentiable pass
(``evaluate``) encodes each sentence once and reuses the context for all its states.

Padding waste (``padding_waste``): the fraction of processed root slots that are not live roots
of a real state (slots beyond r, and states after termination).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from gfnem_jax.envs.base import masked_log_softmax
from gfnem_jax.grammar.env import ParseTree
from gfnem_jax.grammar.policy import ParsePolicy, shrink
from gfnem_jax.nets.policy import encode_batch
from gfnem_jax.sampling import (Evaluation, Exploration, Trajectories, behaviour_log_probs,
                                sample_keys)


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


def _forward_one(env: ParseTree, policy: ParsePolicy, params, explore, buckets, key, s0, ctx):
    T = env.max_steps

    def run_bucket(s, t0, t1, K):
        def body(s, t):
            done = env.is_terminal(s)
            out = policy.apply_forward(params, shrink(env.observe(s), K), ctx)
            fmask = env.forward_mask(s)
            logp = masked_log_softmax(out.fwd_logits, fmask)
            logpi = behaviour_log_probs(out.fwd_logits, fmask, explore)
            a = jax.random.categorical(jax.random.fold_in(key, t), logpi).astype(jnp.int32)
            nxt = env.step(s, a)
            valid = ~done
            nxt = jax.tree.map(lambda n, o: jnp.where(valid, n, o), nxt, s)
            b = env.backward_action(s, a)
            zero = jnp.zeros((), logp.dtype)
            return nxt, (nxt, jnp.where(valid, a, 0), jnp.where(valid, b, 0), valid,
                         jnp.where(valid, logp[a], zero), jnp.where(valid, logpi[a], zero))
        return jax.lax.scan(body, s, jnp.arange(t0, t1))

    s, ys = s0, []
    for t0, t1, K in buckets:
        t1 = min(t1, T)
        if t1 > t0:
            s, y = run_bucket(s, t0, t1, K)
            ys.append(y)
    states, acts, bacts, mask, lpf, lpi = jax.tree.map(lambda *a: jnp.concatenate(a), *ys)
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a]), s0, states)
    return states, acts, bacts, mask, lpf, lpi


def rollout(env: ParseTree, policy: ParsePolicy, params, key, cond, log_reward_fn=None,
            reward_params=None, explore: Exploration = Exploration(), n_buckets: int = 4,
            index_offset=0) -> Trajectories:
    """Sample one trajectory per sentence (cond leaves [B, ...]) with the behaviour policy.

    The sampling pass (``policy.apply_forward``) on K(t) root slots; log_pf is the target
    policy's log-prob of each step, log_pi the behaviour's; log_pb and log_flow are zeros (fill
    them with ``evaluate``). log_reward from ``log_reward_fn(reward_params, cond, state)`` if
    given (e.g. ``env.log_reward`` with the grammar), else zeros. No gradient flows.
    """
    params = jax.lax.stop_gradient(params)
    B = cond["length"].shape[0]
    keys = sample_keys(key, B, index_offset)
    ctx = encode_batch(policy, params, cond)
    s0 = jax.vmap(env.init)(cond)
    buckets = time_buckets(env.max_len, n_buckets)
    f = lambda k, s, c: _forward_one(env, policy, params, explore, buckets, k, s, c)
    states, acts, bacts, mask, lpf, lpi = jax.vmap(f)(keys, s0, ctx)
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    terminal = jax.tree.map(lambda a: a[:, -1], states)
    if log_reward_fn is None:
        log_reward = jnp.zeros((B,), lpf.dtype)
    else:
        log_reward = jax.vmap(lambda c, s: log_reward_fn(reward_params, c, s))(cond, terminal)
    zeros_flow = jnp.zeros(mask.shape[:1] + (mask.shape[1] + 1,), lpf.dtype)
    return Trajectories(states, acts, bacts, mask, lpf, jnp.zeros_like(lpf), lpi, zeros_flow,
                        lengths, terminal, log_reward, cond)


def evaluate(env: ParseTree, policy: ParsePolicy, params, traj: Trajectories,
             n_buckets: int = 4, ctx=None) -> Evaluation:
    """Differentiable log P_F, log P_B [B, T] and log F [B, T+1] (network part) of ``traj``.

    One batched pass per time bucket over the B states of its times, each on K root slots;
    ``ctx`` (the encoded sentences, ``encode_batch``) is computed here when not given.
    """
    B, T = traj.actions.shape
    if ctx is None:
        ctx = encode_batch(policy, params, traj.cond)
    obs = jax.vmap(jax.vmap(env.observe))(traj.states)
    per_traj = jax.vmap(lambda o, c: jax.vmap(lambda oo: policy.apply(params, oo, c))(o))
    outs = []
    for t0, t1, K in time_buckets(env.max_len, n_buckets):
        seg = jax.tree.map(lambda a: a[:, t0:t1], shrink(obs, K))
        outs.append(per_traj(seg, ctx))
    out = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs)
    fmask = jax.vmap(jax.vmap(env.forward_mask))(traj.states)
    bmask = jax.vmap(jax.vmap(env.backward_mask))(traj.states)
    logpf_all = masked_log_softmax(out.fwd_logits, fmask)
    logpb_all = masked_log_softmax(out.bwd_logits, bmask)
    lpf = jnp.take_along_axis(logpf_all[:, :-1], traj.actions[..., None], axis=-1)[..., 0]
    lpb = jnp.take_along_axis(logpb_all[:, 1:], traj.bwd_actions[..., None], axis=-1)[..., 0]
    m = traj.mask
    flow_mask = jnp.concatenate([jnp.ones((B, 1), bool), m], axis=1)
    return Evaluation(jnp.where(m, lpf, 0.0), jnp.where(m, lpb, 0.0),
                      jnp.where(flow_mask, out.log_flow, 0.0))


def pack_sizes(max_len: int, step: int = 4):
    """The static root-slot counts K of ``evaluate_packed``'s branches: multiples of ``step``
    up to max_len (max_len itself the last), covering every root count r in 2..max_len."""
    L, step = int(max_len), int(step)
    if step < 1:
        raise ValueError(f"slot step must be >= 1, got {step}")
    return sorted({min(L, -(-r // step) * step) for r in range(2, L + 1)})


def evaluate_packed(env: ParseTree, policy: ParsePolicy, params, traj: Trajectories,
                    chunk: int = 32, step: int = 4, ctx=None) -> Evaluation:
    """``evaluate`` with the states packed across sentences: the same Evaluation, fewer FLOPs.

    Only states with r >= 2 roots need the network (the terminal state has P_B = 1 and its flow
    is the reward; states after termination are padding): a sentence of n words has n - 1 of
    them, with n, n-1, ..., 2 roots. All B (T + 1) states are sorted by their root count r
    (descending) and cut into chunks of ``chunk`` states; each chunk runs ``policy.apply`` on
    K(chunk) root slots, K the smallest of ``pack_sizes(L, step)`` >= the chunk's largest r
    (``lax.switch`` inside ``lax.map``: one compiled branch per K, empty chunks skipped).
    Processed slots drop from B * sum_t K(t) to about sum over states of r, whatever the mix of
    lengths. log_flow is 0 at states that need no pass (the objectives replace the terminal
    flow by log R). Outputs: log P_F, log P_B [B, T] and log F [B, T+1], as ``evaluate``.
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
                return jnp.stack([lpf, lpb, out.log_flow], axis=1)
            return lambda _: f(params, obs, c, a, b, fmask, bmask)

        skip = lambda _: jnp.zeros((idx.shape[0], 3), jnp.float32)
        top = r_p[idx[0]]  # sorted: the chunk's largest root count
        k = jnp.where(top < 2, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), top))
        return jax.lax.switch(k, [skip] + [branch(K) for K in sizes], None)

    vals = jax.lax.map(run, order.reshape(n_chunks, chunk))
    vals = jnp.zeros((N + 1, 3), vals.dtype).at[order].add(vals.reshape(-1, 3))[:N]
    vals = jnp.where((r > 0)[:, None], vals, 0.0).reshape(B, S, 3)
    m = traj.mask
    flow_mask = jnp.concatenate([jnp.ones((B, 1), bool), m], axis=1)
    return Evaluation(jnp.where(m, vals[:, :-1, 0], 0.0), jnp.where(m, vals[:, 1:, 1], 0.0),
                      jnp.where(flow_mask, vals[..., 2], 0.0))


def forward_looking(env: ParseTree, grammar, traj: Trajectories, ev: Evaluation) -> Evaluation:
    """ev with log F(s_t) += g(s_t) (``env.partial_log_reward``: rules fixed so far), the
    forward-looking flow of issue 9; g carries no gradient to the policy (it is the grammar's)."""
    g = jax.vmap(lambda c, st: jax.vmap(lambda s: env.partial_log_reward(grammar, c, s))(st))(
        traj.cond, traj.states)
    B = traj.actions.shape[0]
    flow_mask = jnp.concatenate([jnp.ones((B, 1), bool), traj.mask], axis=1)
    return ev._replace(log_flow=ev.log_flow + jnp.where(flow_mask, g, 0.0))


def estep_loss(env: ParseTree, policy: ParsePolicy, objective, params, traj: Trajectories,
               n_buckets: int = 4, grammar: Optional[dict] = None, pack: int = 0) -> jax.Array:
    """The E-step objective of ``traj`` (e.g. ``objectives.subtb(lam=1.0)``), differentiable in
    ``params``: sentences encoded once, bucketed evaluation (``evaluate_packed`` in chunks of
    ``pack`` states when pack > 0), log Z(x) per sentence, and the forward-looking flow term
    when ``grammar`` is given."""
    ctx = encode_batch(policy, params, traj.cond)
    if pack:
        ev = evaluate_packed(env, policy, params, traj, pack, ctx=ctx)
    else:
        ev = evaluate(env, policy, params, traj, n_buckets, ctx)
    if grammar is not None:
        ev = forward_looking(env, jax.lax.stop_gradient(grammar), traj, ev)
    log_z = jax.vmap(policy.log_z, (None, 0))(params, ctx)
    return objective(ev, traj, log_z)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The shrinking-root-set engine of a ``gfnem_jax.gflownet.GFlowNet`` over ``ParseTree``
    (``GFlowNet(env, policy, objective, engine=Buckets(4))``): its training rollout is
    ``rollout`` and its differentiable pass ``evaluate`` with ``n_buckets`` time buckets, or
    ``evaluate_packed`` in chunks of ``pack`` states when pack > 0 (same values, fewer FLOPs when
    sentence lengths differ)."""

    n_buckets: int = 4
    pack: int = 0

    def rollout(self, env, policy, params, key, batch_size, log_reward_fn, reward_params, cond,
                explore, index_offset):
        if cond is None or cond["length"].shape[0] != batch_size:
            raise ValueError("Buckets.rollout needs one sentence (cond row) per trajectory")
        return rollout(env, policy, params, key, cond, log_reward_fn, reward_params, explore,
                       self.n_buckets, index_offset)

    def evaluate(self, env, policy, params, traj, ctx):
        if self.pack:
            return evaluate_packed(env, policy, params, traj, self.pack, ctx=ctx)
        return evaluate(env, policy, params, traj, self.n_buckets, ctx)


def _onepass_one(env, policy, params, explore, buckets, key, s0, ctx):
    """One differentiable rollout: each state s_t (t < T) gets one full policy pass."""
    T = env.max_steps

    def run_bucket(s, t0, t1, K):
        def body(s, t):
            done = env.is_terminal(s)
            out = policy.apply(params, shrink(env.observe(s), K), ctx)
            fmask = env.forward_mask(s)
            logp = masked_log_softmax(out.fwd_logits, fmask)
            logpi = behaviour_log_probs(jax.lax.stop_gradient(out.fwd_logits), fmask, explore)
            a = jax.random.categorical(jax.random.fold_in(key, t), logpi).astype(jnp.int32)
            lpb_here = masked_log_softmax(out.bwd_logits, env.backward_mask(s))
            nxt = env.step(s, a)
            valid = ~done
            nxt = jax.tree.map(lambda n, o: jnp.where(valid, n, o), nxt, s)
            b = jnp.where(valid, env.backward_action(s, a), 0)
            zero = jnp.zeros((), logp.dtype)
            return nxt, (nxt, jnp.where(valid, a, 0), b, valid, jnp.where(valid, logp[a], zero),
                         jnp.where(valid, logpi[a], zero), lpb_here, out.log_flow)
        return jax.lax.scan(body, s, jnp.arange(t0, t1))

    s, ys = s0, []
    for t0, t1, K in buckets:
        t1 = min(t1, T)
        if t1 > t0:
            s, y = run_bucket(s, t0, t1, K)
            ys.append(y)
    states, acts, bacts, mask, lpf, lpi, lpb_all, flow = jax.tree.map(
        lambda *a: jnp.concatenate(a), *ys)
    # log P_B(s_t | s_{t+1}) from the pass on s_{t+1}; s_T is terminal (one root: P_B = 1)
    nxt_lpb = jnp.concatenate([lpb_all[1:], jnp.zeros_like(lpb_all[:1])])
    lpb = jnp.where(mask, jnp.take_along_axis(nxt_lpb, bacts[:, None], axis=1)[:, 0], 0.0)
    flow = jnp.concatenate([flow, jnp.zeros_like(flow[:1])])  # F(s_T) is set to R by the loss
    states = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a]), s0, states)
    return states, acts, bacts, mask, lpf, lpb, lpi, flow


def estep_onepass(env: ParseTree, policy: ParsePolicy, objective, params, key, cond,
                  log_reward_fn, reward_params=None, explore: Exploration = Exploration(),
                  n_buckets: int = 4, grammar: Optional[dict] = None, index_offset=0):
    """(loss, traj): the E-step objective on a batch sampled by a DIFFERENTIABLE rollout.

    Each visited state gets exactly one full policy pass, during sampling: log P_F of the sampled
    action, log P_B of the previous step and log F come from it (gradients flow through them,
    not through the sampled actions), so there is no second evaluation pass. Cost: T passes +
    their backward (about 3 units) instead of T sampling passes + T+1 evaluation passes + their
    backward (about 4 units). Same trajectories and loss as ``rollout`` + ``estep_loss``.
    """
    B = cond["length"].shape[0]
    keys = sample_keys(key, B, index_offset)
    ctx = encode_batch(policy, params, cond)
    s0 = jax.vmap(env.init)(cond)
    buckets = time_buckets(env.max_len, n_buckets)
    f = lambda k, s, c: _onepass_one(env, policy, params, explore, buckets, k, s, c)
    states, acts, bacts, mask, lpf, lpb, lpi, flow = jax.vmap(f)(keys, s0, ctx)
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    terminal = jax.tree.map(lambda a: a[:, -1], states)
    log_reward = jax.vmap(lambda c, s: log_reward_fn(reward_params, c, s))(cond, terminal)
    flow_mask = jnp.concatenate([jnp.ones((B, 1), bool), mask], axis=1)
    ev = Evaluation(lpf, lpb, jnp.where(flow_mask, flow, 0.0))
    sg = jax.lax.stop_gradient
    traj = Trajectories(states, acts, bacts, mask, sg(lpf), sg(lpb), lpi, sg(ev.log_flow), lengths,
                        terminal, sg(log_reward), cond)
    if grammar is not None:
        ev = forward_looking(env, sg(grammar), traj, ev)
    log_z = jax.vmap(policy.log_z, (None, 0))(params, ctx)
    return objective(ev, traj, log_z), traj
