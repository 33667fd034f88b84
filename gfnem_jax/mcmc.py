"""MCMC samplers: GFlowNet back-and-forth Metropolis-Hastings, Gibbs and Gibbs-with-gradients.

All are pure and keyed; a batch of B independent chains moves at once.

back_and_forth (EB-GFN's contrastive-divergence move, GFlowNet-EM's local search): from terminal
x, sample a backward trajectory with P_B and cut it k steps back at s; go forward from s with P_F
to x'. Accept with probability min(1, A),

    A = [R(x') P_B(x' ~> s) P_F(s ~> x)] / [R(x) P_B(x ~> s) P_F(s ~> x')],

P_B(x ~> s): probability of the k backward steps taken, P_F(s ~> x): that of the same steps read
forward; primed terms for the new segment. This is MH on (x, path) pairs whose reverse move
retraces the path, so R is invariant whenever the reverse proposal from x' cuts at the same s:
exact on graded DAGs where every path from s to a terminal has the same number of steps
(``Bits``, ``Sequence``, fixed-size sets). k may be a traced int (schedules) or an int array [B]
(one per chain). This is the one implementation: EB-GFN's gfn-cd negatives
(``gfnem_jax.ebgfn``) and GFlowNet-EM's local search (``gfnem_jax.em.local_search``,
a thin wrapper of ``back_and_forth_chain``) both call it.

Keys are per chain: chain i (global index ``index_offset + i``) draws its randomness from
``fold_in(key, index_offset + i)`` (``sampling.sample_keys``), so a batch split over devices
(each device passing its shard's offset) moves every chain exactly as on one device.

Gibbs / Gibbs-with-gradients (Grathwohl et al. 2021) for p(x) ∝ exp(-E(x)) on {0,1}^d, with
``energy_fn(params, x float[d]) -> float[]``:
  gibbs_step   random-scan single-site Gibbs: pick i uniformly, resample x_i from
               p(x_i = 1 | x_-i) = sigmoid(E(x_i=0) - E(x_i=1)).
  gwg_step     f = -E; d(x)_i = -(2 x_i - 1) df/dx_i; q(i | x) = softmax(d(x) / 2); flip i,
               accept min(1, exp(f(x') - f(x)) q(i | x') / q(i | x)).
  gibbs / gwg  n steps under lax.scan (gwg_chains: with each chain's acceptance rate).
Gibbs and GwG keys are per chain too (``index_offset``, as above).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gfnem_jax.envs.base import Environment
from gfnem_jax.sampling import Exploration, backward_rollout, forward_rollout, sample_keys

EnergyFn = Callable[[Any, jax.Array], jax.Array]  # (params, x float[d]) -> float[]


class MHProposal(NamedTuple):
    """One back-and-forth proposal per chain (B chains)."""

    x_new: Any  # pytree [B, ...] proposed terminal states x'
    log_accept: jax.Array  # float[B] log A (before min with 0)
    cut_state: Any  # pytree [B, ...] the state s the segments meet at
    log_r_old: jax.Array  # float[B]
    log_r_new: jax.Array  # float[B]


def propose_back_and_forth(env: Environment, policy, params, key, x_terminal, k,
                           log_reward_fn, reward_params, cond=None,
                           index_offset=0) -> MHProposal:
    """The back-and-forth proposal and its log MH ratio (see the module docstring).

    Args:
      policy: a ``gfnem_jax.nets.policy.Policy`` with learned (or uniform) P_B; params: its params.
      x_terminal: pytree [B, ...] of terminal states; k: steps back (int or traced int32; cut at
        max(L - k, 0) for a trajectory of L steps, so k >= L restarts from s_0).
      log_reward_fn(reward_params, cond, state) -> float[]; cond: None or leaves [B, ...].
      index_offset: global index of the first chain (per-chain keys; device-split batches).
    """
    B = jax.tree.leaves(x_terminal)[0].shape[0]
    T = env.max_steps
    kb, kf = jax.random.split(key)
    bt = backward_rollout(env, policy, params, kb, x_terminal, log_reward_fn, reward_params, cond,
                          index_offset)
    j = jnp.maximum(bt.lengths - jnp.asarray(k, jnp.int32), 0)  # forward time of the cut state
    s = jax.tree.map(lambda a: a[jnp.arange(B), j], bt.states)
    seg = jnp.arange(T)[None, :] >= j[:, None]
    old_pf = jnp.sum(jnp.where(seg, bt.log_pf, 0.0), axis=1)
    old_pb = jnp.sum(jnp.where(seg, bt.log_pb, 0.0), axis=1)
    ft = forward_rollout(env, policy, params, kf, B, log_reward_fn, reward_params, cond,
                         Exploration(), index_offset, init_states=s)
    new_pf = jnp.sum(ft.log_pf, axis=1)
    new_pb = jnp.sum(ft.log_pb, axis=1)
    log_a = (ft.log_reward + new_pb + old_pf) - (bt.log_reward + old_pb + new_pf)
    return MHProposal(ft.terminal, log_a, s, bt.log_reward, ft.log_reward)


def back_and_forth(env: Environment, policy, params, key, x_terminal, k, log_reward_fn,
                   reward_params, cond=None, index_offset=0):
    """One back-and-forth MH step per chain.

    Returns (x_new pytree [B, ...], accepted bool[B], log_accept float[B] = min(0, log A)).
    Keys: proposal from fold_in(key, 0), chain i's uniform from fold_in(fold_in(key, 1),
    index_offset + i). No gradient flows.
    """
    params = jax.lax.stop_gradient(params)
    reward_params = jax.lax.stop_gradient(reward_params)
    prop = propose_back_and_forth(env, policy, params, jax.random.fold_in(key, 0), x_terminal, k,
                                  log_reward_fn, reward_params, cond, index_offset)
    B = prop.log_accept.shape[0]
    u = jax.vmap(jax.random.uniform)(sample_keys(jax.random.fold_in(key, 1), B, index_offset))
    accepted = jnp.log(u) < prop.log_accept
    x_new = jax.tree.map(lambda n, o: jnp.where(accepted.reshape((B,) + (1,) * (n.ndim - 1)), n, o),
                         prop.x_new, x_terminal)
    return x_new, accepted, jnp.minimum(prop.log_accept, 0.0)


def back_and_forth_chain(env: Environment, policy, params, key, x_terminal, k, rounds: int,
                         log_reward_fn, reward_params, cond=None, index_offset=0):
    """``rounds`` back-and-forth steps (round r keyed fold_in(key, r)).

    Returns (x pytree [B, ...], float[B] each chain's acceptance rate over the rounds). This is
    GFlowNet-EM's local search: ``em.local_search(gfn, f, theta, params, key, term, cond, rounds,
    back, index_offset)`` is ``back_and_forth_chain(gfn.env, gfn.policy, params, key, term, back,
    rounds, f, theta, cond, index_offset)``.
    """
    B = jax.tree.leaves(x_terminal)[0].shape[0]

    def body(r, carry):
        x, acc = carry
        x, a, _ = back_and_forth(env, policy, params, jax.random.fold_in(key, r), x, k,
                                 log_reward_fn, reward_params, cond, index_offset)
        return x, acc + a.astype(jnp.float32)

    x, acc = jax.lax.fori_loop(0, rounds, body, (x_terminal, jnp.zeros((B,), jnp.float32)))
    return x, acc / max(rounds, 1)


# -- Gibbs and Gibbs-with-gradients on {0,1}^d ------------------------------------------------------
def gibbs_conditional(energy_fn: EnergyFn, params, x, i) -> jax.Array:
    """p(x_i = 1 | x_-i) = sigmoid(E(x with x_i=0) - E(x with x_i=1)) for one x float[d]."""
    e0 = energy_fn(params, x.at[i].set(0.0))
    e1 = energy_fn(params, x.at[i].set(1.0))
    return jax.nn.sigmoid(e0 - e1)


def gibbs_step(energy_fn: EnergyFn, params, key, x, index_offset=0) -> jax.Array:
    """Random-scan Gibbs on a batch x float[B, d]: per chain, one uniformly chosen site resampled
    (chain i keyed fold_in(key, index_offset + i))."""
    B, d = x.shape

    def one(xi, kk):
        ki, ku = jax.random.split(kk)
        i = jax.random.randint(ki, (), 0, d)
        p1 = gibbs_conditional(energy_fn, params, xi, i)
        return xi.at[i].set((jax.random.uniform(ku) < p1).astype(xi.dtype))

    return jax.vmap(one)(x, sample_keys(key, B, index_offset))


def gibbs_sweep(energy_fn: EnergyFn, params, key, x) -> jax.Array:
    """Systematic-scan Gibbs: sites 0..d-1 in order (each update leaves p invariant)."""
    B, d = x.shape
    us = jax.random.uniform(key, (d, B))

    def site(xx, iu):
        i, u = iu
        p1 = jax.vmap(lambda v: gibbs_conditional(energy_fn, params, v, i))(xx)
        return xx.at[:, i].set((u < p1).astype(xx.dtype)), None

    return jax.lax.scan(site, x, (jnp.arange(d), us))[0]


def gwg_log_q(energy_fn: EnergyFn, params, x) -> jax.Array:
    """float[d]: log q(i | x) = log_softmax(d(x) / 2), d(x)_i = -(2 x_i - 1) * d(-E)/dx_i."""
    g = -jax.grad(energy_fn, argnums=1)(params, x)
    return jax.nn.log_softmax(-(2.0 * x - 1.0) * g / 2.0)


def gwg_step(energy_fn: EnergyFn, params, key, x, index_offset=0):
    """One Gibbs-with-gradients step on x float[B, d] (chain i keyed fold_in(key, index_offset +
    i)). Returns (x_new, accepted bool[B])."""
    B, d = x.shape

    def one(xi, kk):
        kc, ku = jax.random.split(kk)
        ui = jax.random.uniform(ku)
        lq = gwg_log_q(energy_fn, params, xi)
        i = jax.random.categorical(kc, lq)
        xn = xi.at[i].set(1.0 - xi[i])
        lq_rev = gwg_log_q(energy_fn, params, xn)
        log_a = (energy_fn(params, xi) - energy_fn(params, xn)) + lq_rev[i] - lq[i]
        acc = jnp.log(ui) < log_a
        return jnp.where(acc, xn, xi), acc

    return jax.vmap(one)(x, sample_keys(key, B, index_offset))


def gibbs(energy_fn: EnergyFn, params, key, x, n_steps: int, sweep: bool = False,
          index_offset=0):
    """n_steps random-scan Gibbs steps (or systematic sweeps), step t keyed fold_in(key, t);
    ``index_offset``: the first chain's global index (random scan; sweeps ignore it)."""
    if sweep:
        step = lambda p, k, xx: gibbs_sweep(energy_fn, p, k, xx)
    else:
        step = lambda p, k, xx: gibbs_step(energy_fn, p, k, xx, index_offset)

    def body(xx, t):
        return step(params, jax.random.fold_in(key, t), xx), None

    return jax.lax.scan(body, x, jnp.arange(n_steps))[0]


def gwg_chains(energy_fn: EnergyFn, params, key, x, n_steps: int, index_offset=0):
    """n_steps Gibbs-with-gradients steps (step t keyed fold_in(key, t)); returns (x, float[B]
    each chain's acceptance rate over the steps)."""

    def body(xx, t):
        xn, acc = gwg_step(energy_fn, params, jax.random.fold_in(key, t), xx, index_offset)
        return xn, acc.astype(jnp.float32)

    x, accs = jax.lax.scan(body, x, jnp.arange(n_steps))
    return x, jnp.mean(accs, 0) if n_steps else jnp.zeros(x.shape[:1])


def gwg(energy_fn: EnergyFn, params, key, x, n_steps: int, index_offset=0):
    """n_steps Gibbs-with-gradients steps; returns (x, mean acceptance rate)."""
    x, acc = gwg_chains(energy_fn, params, key, x, n_steps, index_offset)
    return x, jnp.mean(acc)
