"""Exact metrics for small instances: distributions by dynamic programming over the state DAG.

``transition_table(env)`` enumerates every state once; ``terminal_distribution`` then pushes
probability mass from s_0 through the DAG with the current forward policy (no sampling):

    P(s_0) = 1,   P(s') = sum_{s -> s'} P(s) P_F(s' | s),

max_steps times, which is exact because every trajectory has at most max_steps steps. The
distribution over terminal states is P restricted to them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.envs.base import Environment, masked_log_softmax


class TransitionTable(NamedTuple):
    states: Any  # pytree, leaves [S, ...]
    children: jax.Array  # int32[S, A] index of step(s, a) (arbitrary where illegal)
    fmask: jax.Array  # bool[S, A]
    terminal: jax.Array  # bool[S]
    init_index: jax.Array  # int32[]


def transition_table(env: Environment, cond=None) -> TransitionTable:
    states = env.all_states(cond)
    A = env.n_actions
    acts = jnp.arange(A)

    def kids(s):
        nxt = jax.vmap(lambda a: env.step(s, a))(acts)
        return jax.vmap(lambda t: env.state_index(t, cond))(nxt)

    children = jax.vmap(kids)(states).astype(jnp.int32)
    fmask = jax.vmap(env.forward_mask)(states)
    terminal = jax.vmap(env.is_terminal)(states)
    init_index = env.state_index(env.init(cond), cond)
    return TransitionTable(states, children, fmask, terminal, init_index)


def _propagate(env: Environment, table: TransitionTable, probs: jax.Array) -> jax.Array:
    """P over all states given forward transition probabilities probs[S, A] (0 where illegal)."""
    S = table.fmask.shape[0]
    e0 = jnp.zeros((S,), probs.dtype).at[table.init_index].set(1.0)
    w = jnp.where(table.fmask, probs, 0.0)
    dst = table.children.reshape(-1)

    def body(_, P):
        return e0 + jax.ops.segment_sum((P[:, None] * w).reshape(-1), dst, num_segments=S)

    return jax.lax.fori_loop(0, env.max_steps, body, e0)


def forward_probs(env: Environment, policy, params, table: TransitionTable, cond=None) -> jax.Array:
    """P_F(a | s) for every state, float[S, A] (0 on illegal actions).

    policy: a ``Policy`` (its condition encoded once), or a function (params, obs, ctx) ->
    PolicyOutput for one state (then ``cond`` is passed as the context).
    """
    obs = jax.vmap(env.observe)(table.states)
    if hasattr(policy, "apply"):
        ctx = policy.encode_cond(params, cond)
        out = jax.vmap(policy.apply, (None, 0, None))(params, obs, ctx)
    else:
        out = jax.vmap(policy, (None, 0, None))(params, obs, cond)
    return jnp.where(table.fmask, jnp.exp(masked_log_softmax(out.fwd_logits, table.fmask)), 0.0)


def terminal_distribution(env: Environment, policy, params, table: TransitionTable, cond=None):
    """float[S]: the exact probability that the sampler ends at each state (0 at non-terminal).

    cond: one condition (unbatched) or None; policy as in ``forward_probs``."""
    P = _propagate(env, table, forward_probs(env, policy, params, table, cond))
    return jnp.where(table.terminal, P, 0.0)


def target_distribution(env: Environment, log_reward_fn, reward_params, table: TransitionTable,
                        cond=None) -> jax.Array:
    """float[S]: R(x)/Z over terminal states (0 elsewhere)."""
    lr = jax.vmap(lambda s: log_reward_fn(reward_params, cond, s))(table.states)
    lr = jnp.where(table.terminal, lr, -jnp.inf)
    return jax.nn.softmax(lr)


def trajectory_counts(env: Environment, table: TransitionTable) -> jax.Array:
    """float[S]: the number of distinct trajectories from s_0 to each state (float64-safe on host)."""
    return _propagate(env, table, table.fmask.astype(jnp.float32))


def l1(p: jax.Array, q: jax.Array) -> jax.Array:
    """sum |p - q| (twice the total variation)."""
    return jnp.sum(jnp.abs(p - q))


def tv(p, q):
    return 0.5 * l1(p, q)


def jsd(p: jax.Array, q: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence in nats (0 <= JSD <= log 2).

    An entry whose mixture 0.5 (p + q) underflows to 0 (p or q a float32 denormal, below ~1e-44)
    adds nothing (its true share is below 1e-42) instead of inf."""
    m = 0.5 * (p + q)

    def kl(a, b):
        ok = (a > 0) & (b > 0)
        return jnp.sum(jnp.where(ok, a * (jnp.log(jnp.where(ok, a, 1.0)) - jnp.log(jnp.where(ok, b, 1.0))), 0.0))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def empirical_distribution(env: Environment, terminal_states, num_states: int, cond=None) -> np.ndarray:
    """Histogram of sampled terminal states over the state index, normalized (host numpy)."""
    idx = np.asarray(jax.vmap(lambda s: env.state_index(s, cond))(terminal_states))
    counts = np.bincount(idx, minlength=num_states).astype(np.float64)
    return counts / counts.sum()


def backward_probs_table(env: Environment, table: TransitionTable, bwd_probs: jax.Array) -> jax.Array:
    """P_B(s | step(s, a)) for every (state, forward action), float[S, A].

    bwd_probs: float[S, A_b], the backward policy at every state (rows in all_states order).
    """
    acts = jnp.arange(env.n_actions)
    b = jax.vmap(lambda s: jax.vmap(lambda a: env.backward_action(s, a))(acts))(table.states)
    return jnp.where(table.fmask, bwd_probs[table.children, b], 0.0)


def uniform_backward_probs(env: Environment, table: TransitionTable) -> jax.Array:
    """float[S, A_b]: the uniform backward policy over legal backward actions."""
    bm = jax.vmap(env.backward_mask)(table.states).astype(jnp.float32)
    return bm / jnp.maximum(bm.sum(-1, keepdims=True), 1.0)


def exact_flows(env: Environment, table: TransitionTable, rewards: jax.Array, pb_sa: jax.Array):
    """Exact state flows and forward policy for a fixed backward policy.

        F(x) = R(x) at terminal states,  F(s) = sum_a F(step(s, a)) P_B(s | step(s, a)),
        P_F(a | s) = F(step(s, a)) P_B(s | step(s, a)) / F(s),

    under which every balance condition (DB, SubTB, TB with Z = F(s_0)) holds exactly and the
    sampler's terminal distribution is R / Z.

    Args: rewards float[S] (R at terminal states; ignored elsewhere); pb_sa float[S, A] from
      ``backward_probs_table``. Returns (F float[S], P_F float[S, A]).
    """
    R = jnp.where(table.terminal, rewards, 0.0)
    w = jnp.where(table.fmask, pb_sa, 0.0)

    def body(_, F):
        return R + jnp.sum(F[table.children] * w, axis=1)

    F = jax.lax.fori_loop(0, env.max_steps + 1, body, R)
    pf = F[table.children] * w / jnp.where(F > 0, F, 1.0)[:, None]
    return F, pf


def soft_rl_fixed_point(env: Environment, table: TransitionTable, log_rewards: jax.Array,
                        log_pb_sa=None):
    """The fixed point of entropy-regularised RL on the state DAG, by dynamic programming.

    Soft value iteration with entropy scale 1 and no discount, the reward of s -> s' being
    c(s, s') = log P_B(s | s') (``log_pb_sa``, the GFlowNet correction) or 0 (None), plus log R(x)
    on reaching a terminal x:

        V(x) = log R(x) (terminal),   Q(s, a) = c(s, a) + V(step(s, a)),
        V(s) = log sum_{a legal} exp Q(s, a),   P_F(a | s) = exp(Q(s, a) - V(s)).

    With the correction V = log F, the flows of ``exact_flows``, and the sampler is R/Z. Without
    it, V(s) = log sum_x n(s -> x) R(x) (n the number of paths) and the sampler ends at x with
    probability n(s_0 -> x) R(x) / sum_y n(s_0 -> y) R(y): R/Z only where every terminal state is
    reached by the same number of paths (a tree, or sets of a fixed size: k! orderings each).

    Args: log_rewards float[S] (used at terminal states), log_pb_sa float[S, A] (log of
      ``backward_probs_table``) or None. Returns (V float[S], Q float[S, A], NEG_INF where
      illegal). Exact after max_steps + 1 sweeps (every path has at most max_steps steps).
    """
    from gfnem_jax.envs.base import NEG_INF
    neg = jnp.asarray(NEG_INF, jnp.float32)
    lr = jnp.where(table.terminal, log_rewards, neg)
    c = jnp.zeros(table.fmask.shape, jnp.float32) if log_pb_sa is None else log_pb_sa
    c = jnp.where(table.fmask, c, neg)

    def body(_, V):
        q = jnp.where(table.fmask, c + V[table.children], neg)
        return jnp.where(table.terminal, lr, jax.nn.logsumexp(q, axis=1))

    V = jax.lax.fori_loop(0, env.max_steps + 1, body, lr)
    return V, jnp.where(table.fmask, c + V[table.children], neg)


def logits_terminal_distribution(env: Environment, table: TransitionTable, logits: jax.Array):
    """float[S]: the exact terminal distribution of P_F = softmax of masked ``logits`` [S, A]."""
    probs = jnp.exp(masked_log_softmax(logits, table.fmask))
    return jnp.where(table.terminal, _propagate(env, table, jnp.where(table.fmask, probs, 0.0)),
                     0.0)


def top_reward_terminals(env: Environment, terminal_indices: jax.Array, n: int) -> jax.Array:
    """Sorted state indices of the ``n`` highest-reward terminal states (the "modes")."""
    st = jax.tree.map(lambda a: a[terminal_indices], env.all_states())
    lr = jax.vmap(lambda s: env.log_reward(None, None, s))(st)
    top = jnp.argsort(-lr)[: min(n, terminal_indices.shape[0])]
    return jnp.sort(terminal_indices[top])
