"""A tabular 'network' for HyperGrid that returns the exact GFlowNet solution (tests only)."""
import jax
import jax.numpy as jnp

from gfnem_jax import metrics
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput


def exact_hypergrid_policy(env):
    """(policy, log_z, table, F): P_F from exact flows with a uniform P_B; flows are exact.

    The policy is a ``FunctionalPolicy`` (no parameters: pass params=None)."""
    table = metrics.transition_table(env)
    rewards = jnp.exp(jax.vmap(lambda s: env.log_reward(None, None, s))(table.states))
    pb_sa = metrics.backward_probs_table(env, table, metrics.uniform_backward_probs(env, table))
    F, pf = metrics.exact_flows(env, table, rewards, pb_sa)
    n = env.height ** env.ndim
    log_pf = jnp.log(jnp.where(table.fmask, pf, 1e-30))
    log_F = jnp.log(F)
    mult = env.height ** jnp.arange(env.ndim - 1, -1, -1)

    def apply_fn(params, feats, cond=None):
        pos = jnp.argmax(feats.reshape(feats.shape[:-1] + (env.ndim, env.height)), axis=-1)
        idx = jnp.sum(pos * mult, axis=-1)  # a non-terminal state's index
        return PolicyOutput(log_pf[idx], jnp.zeros(feats.shape[:-1] + (env.n_bwd_actions,)), log_F[idx])

    policy = FunctionalPolicy(lambda k, o, c: None, apply_fn, lambda p, c: log_F[table.init_index])
    return policy, log_F[table.init_index], table, F
