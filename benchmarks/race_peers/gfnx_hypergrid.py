"""gfnx worker for benchmarks/race.py: gfnx's TB HyperGrid baseline, on gfnx's public API.

As gfnx's own trajectory-balance hypergrid baseline: one equinox MLP shared by P_F and P_B (its
output split into forward and backward logits), on-policy rollouts with
``gfnx.utils.forward_rollout``, TB on the sampled trajectories, Adam lr 1e-3 with log Z at lr 0.1,
the updates of one evaluation interval in one jitted ``lax.fori_loop``. Runs inside the gfnx venv.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, parser, write  # noqa: E402

args = parser(__doc__.split("\n")[0]).parse_args()
if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
if args.loss != "tb":
    raise SystemExit("the gfnx worker implements its TB baseline only (--loss tb)")

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
net = eqx.nn.MLP(env.observation_space.shape[0], A + Ab, args.hidden, args.n_hidden, key=k_net)
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


def one_step(carry):
    p, o, k = carry
    k, k_roll = jax.random.split(k)
    traj, _ = gfnx.utils.forward_rollout(k_roll, args.batch, policy_fn, p["net"], env, env_params)
    grads = jax.grad(tb_loss)(p, traj)
    upd, o = tx.update(grads, o, p)
    return optax.apply_updates(p, upd), o, k


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


carry = (params, opt_state, key)
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
