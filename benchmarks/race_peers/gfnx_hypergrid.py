"""gfnx worker for benchmarks/race.py: gfnx's TB HyperGrid baseline, on gfnx's public API.

As gfnx's own trajectory-balance hypergrid baseline: one equinox MLP shared by P_F and P_B (its
output split into forward and backward logits), on-policy rollouts with
``gfnx.utils.forward_rollout``, TB on the sampled trajectories, Adam lr 1e-3 with log Z at lr 0.1,
the updates of one evaluation interval in one jitted ``lax.fori_loop``. Runs inside the gfnx venv.

``--loss soft_q``: gfnx's soft DQN hypergrid baseline (its ``baselines/soft_dqn_hypergrid.py``
at its config ``soft_dqn_hypergrid.yaml``), written on the public API of the released gfnx 0.0.1:
a dueling MLP (advantages and a value, Q = V + log_softmax(advantages)), on-policy rollouts
(exploration epsilon 0), transitions from ``gfnx.utils.split_traj_to_transitions``, target
log P_B(s | s') + Vbar(s') with a uniform P_B (log R at the stop transition), the Huber loss with
the stop transitions weighted 5 (``leaf_coeff``), Adam, a target network updated every step at
Polyak rate ``--tau`` (0.25). Its policy is softmax(advantages), exported as for TB.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, parser, write  # noqa: E402

args = parser(__doc__.split("\n")[0]).parse_args()
if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
if args.loss not in ("tb", "soft_q"):
    raise SystemExit("the gfnx worker implements its TB and soft DQN baselines only (--loss tb, "
                     "--loss soft_q)")
SOFT_DQN = args.loss == "soft_q"
LEAF_COEFF = 5.0  # gfnx's soft_dqn_hypergrid.yaml

import equinox as eqx  # noqa: E402
import gfnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

t_import = now()
reward = gfnx.GeneralHypergridRewardModule(R0=args.r0, R1=args.r1, R2=args.r2)
env = gfnx.HypergridEnvironment(reward, dim=args.ndim, side=args.height)
env_params = env.init(jax.random.PRNGKey(1))
A, Ab = env.action_space.n, env.backward_action_space.n
key = jax.random.PRNGKey(args.seed)
key, k_net = jax.random.split(key)
n_out = A + 1 if SOFT_DQN else A + Ab  # soft DQN: dueling advantages and a value
net = eqx.nn.MLP(env.observation_space.shape[0], n_out, args.hidden, args.n_hidden, key=k_net)
params = {"net": eqx.filter(net, eqx.is_array), "log_z": jnp.zeros(())}
static = eqx.filter(net, eqx.is_array, inverse=True)
labels = {"net": jax.tree.map(lambda _: "net", params["net"]), "log_z": "log_z"}
tx = optax.multi_transform({"net": optax.adam(args.lr), "log_z": optax.adam(args.lr_logz)}, labels)
opt_state = tx.init(params)


def policy(p, obs):
    return jax.vmap(eqx.combine(p, static))(obs)


def policy_fn(rng, obs, p):
    out = policy(p, obs)
    return out[..., :A], {}


def tb_loss(p, traj):
    B, T1 = traj.action.shape
    flat = jax.tree.map(lambda x: x.reshape((B * T1,) + x.shape[2:]), traj.state)
    out = policy(p["net"], traj.obs.reshape(B * T1, -1))
    inv_f = env.get_invalid_mask(flat, env_params).reshape(B, T1, A)
    inv_b = env.get_invalid_backward_mask(flat, env_params).reshape(B, T1, Ab)
    out = out.reshape(B, T1, A + Ab)
    real = ~traj.pad
    lpf = jax.nn.log_softmax(gfnx.utils.mask_logits(out[..., :A], inv_f), axis=-1)
    lpf = jnp.take_along_axis(lpf, traj.action[..., None], -1)[..., 0]
    b_act = env.get_backward_action(None, traj.action[:, :-1], None, env_params)
    lpb = jax.nn.log_softmax(gfnx.utils.mask_logits(out[:, 1:, A:], inv_b[:, 1:]), axis=-1)
    lpb = jnp.take_along_axis(lpb, b_act[..., None], -1)[..., 0]
    log_r = jnp.where(real, traj.log_gfn_reward, 0.0).sum(1)
    delta = (p["log_z"] + jnp.where(real, lpf, 0.0).sum(1)
             - jnp.where(real[:, :-1], lpb, 0.0).sum(1) - log_r)
    return jnp.mean(delta ** 2)


def soft_dqn_loss(p, target, traj):
    tr = gfnx.utils.split_traj_to_transitions(traj)  # [B*T]
    out = policy(p["net"], tr.obs)
    inv = env.get_invalid_mask(tr.state, env_params)
    q = out[:, A:] + jax.nn.log_softmax(gfnx.utils.mask_logits(out[:, :A], inv), axis=-1)
    q = jnp.take_along_axis(q, tr.action[:, None], -1)[:, 0]
    v_next = policy(target["net"], tr.next_obs)[:, A]
    inv_b = env.get_invalid_backward_mask(tr.next_state, env_params)
    log_pb = -jnp.log(jnp.maximum(jnp.sum(~inv_b, axis=-1), 1).astype(jnp.float32))
    y = jax.lax.stop_gradient(jnp.where(tr.done, tr.log_gfn_reward, log_pb + v_next))
    valid = ~tr.pad
    loss = optax.losses.huber_loss(q, y) * jnp.where(tr.done, LEAF_COEFF, 1.0)
    return jnp.sum(jnp.where(valid, loss, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def one_step(carry):
    p, o, k = carry
    k, k_roll = jax.random.split(k)
    traj, _ = gfnx.utils.forward_rollout(k_roll, args.batch, policy_fn, p["net"], env, env_params)
    if SOFT_DQN:  # the target network rides in the carry beside the optimizer state
        o, target = o
        grads = jax.grad(soft_dqn_loss)(p, target, traj)
    else:
        grads = jax.grad(tb_loss)(p, traj)
    upd, o = tx.update(grads, o, p)
    p = optax.apply_updates(p, upd)
    if SOFT_DQN:
        o = (o, optax.incremental_update(p, target, args.tau))
    return p, o, k


@jax.jit
def run(carry, n):
    return jax.lax.fori_loop(0, n, lambda i, c: one_step(c), carry)


all_states = env.get_all_states(env_params)
obs_all = env.get_obs(all_states, env_params)
inv_all = env.get_invalid_mask(all_states, env_params)


@jax.jit
def pf_table(p):
    logits = gfnx.utils.mask_logits(policy(p["net"], obs_all)[:, :A], inv_all)
    return jax.nn.softmax(logits, axis=-1)


carry = (params, (opt_state, params) if SOFT_DQN else opt_state, key)
carry = jax.block_until_ready(run(carry, 1))
t_first = now()
pf_table(carry[0]).block_until_ready()
tables, evals = [], []
eval_s = now() - t_first
steps, train_s = 1, 0.0
# the first chunk (eval_every - 1 steps) compiles no new program: n is traced
while steps < args.steps and train_s < args.max_seconds:
    n = min(args.eval_every - steps % args.eval_every, args.steps - steps)
    t = now()
    carry = jax.block_until_ready(run(carry, n))
    train_s += now() - t
    steps += n
    t_e = now()
    tables.append(np.asarray(pf_table(carry[0])))
    evals.append({"step": steps, "t_s": round(t_e - eval_s, 4)})
    eval_s += now() - t_e
np.savez_compressed(args.out + ".npz", *tables)
write(args.out, {"lib": "gfnx", "version": "0.0.1", "jax": jax.__version__,
                 "device": str(jax.devices()[0]), "t_import_s": round(t_import, 3),
                 "t_first_step_s": round(t_first, 3), "steps": steps - 1,
                 "train_s": round(train_s, 4), "its": round((steps - 1) / max(train_s, 1e-9), 3),
                 "evals": evals, "eval_s": round(eval_s, 3)})
