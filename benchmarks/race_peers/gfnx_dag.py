"""gfnx worker for ``benchmarks/race.py --dag``: gfnx's modified-DB DAG baseline on gfnx's public API.

gfnx 0.0.1's pip package holds the environment and reward (``gfnx.DAGEnvironment``,
``gfnx.DAGRewardModule``, ``gfnx.reward.BGeScore``, ``gfnx.reward.UniformDAGPrior``) but not the
baseline, a script of its repository (``baselines/mdb_dag.py`` at ``configs/mdb_dag.yaml``). This
worker trains that baseline at that configuration, written here on the package's API:

  * policy: a graph network in equinox + jraph (its ``baselines`` extra): learned node-id, edge and
    global embeddings of size 128; ``--gnn-layers`` (1) jraph.GraphNetwork rounds (edge, node and
    global MLPs of one hidden layer over the concatenated features, residual + LayerNorm); one
    multi-head self-attention over each graph's nodes (4 heads) + LayerNorm; sender and receiver
    MLPs whose inner products give the d^2 edge logits; an MLP of the global feature gives the
    stop logit. P_B is uniform (backward logits zero);
  * training: ``gfnx.utils.forward_rollout`` of 128 environments, each one's logits replaced by
    zeros (uniform over the legal actions) with probability eps, eps falling linearly 1.0 -> 0.1
    over 50,000 updates; the transitions of ``gfnx.utils.split_traj_to_transitions``; the
    modified-DB residual

        log P_F(s'|s) - log P_F(stop|s) + log P_Fbar(stop|s') - log P_B(s|s') - delta(s -> s'),

    Pbar the target network (copied from the online one at every update index divisible by 1000),
    delta from ``DAGRewardModule.delta_score``; the Huber loss averaged over the non-stop,
    non-padding transitions; Adam at lr 1e-4.

The data are the caller's (``--data``, float[N, d] .npy: the observations our run scored), with
gfnx's BGe at the config's hyperparameters (mean_obs 0, alpha_mu 1, alpha_w d + 2) and its uniform
prior. Updates run in one jitted ``lax.fori_loop`` per evaluation interval (its per-step logging
callback and its in-loop metrics are left out; evaluation is excluded from the times).

Exports for OUR exact scoring (race.py): at each evaluation, P_F(a | G) (float32[G, d^2 + 1],
columns: edge i -> j at i d + j, then stop; gfnx's own invalid-action mask applied) on every DAG
of ``--dags`` (uint8[G, d, d], our enumeration's order) to TABLES/pf_<k>.npy; once, gfnx's log
reward of every one of those DAGs to TABLES/log_reward.npy. Writes the JSON of common_cli.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, write  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", required=True, help="observations float[N, d] (.npy)")
p.add_argument("--dags", required=True, help="every DAG, uint8[G, d, d] (.npy), for the export")
p.add_argument("--tables", required=True, help="folder for pf_<k>.npy and log_reward.npy")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--steps", type=int, default=100_000)
p.add_argument("--eval-every", type=int, default=500)
p.add_argument("--max-seconds", type=float, default=1e9)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--start-eps", type=float, default=1.0)
p.add_argument("--end-eps", type=float, default=0.1)
p.add_argument("--exploration-steps", type=int, default=50_000)
p.add_argument("--target-every", type=int, default=1000)
p.add_argument("--emb", type=int, default=128)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--gnn-layers", type=int, default=1)
p.add_argument("--mlp-layers", type=int, default=1)
p.add_argument("--seed", type=int, default=111)
p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
p.add_argument("--out", required=True)
args = p.parse_args()
if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import gfnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jraph  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

t_import = now()
X = np.load(args.data)
DAGS = np.load(args.dags).astype(bool)
G, d, _ = DAGS.shape
if X.shape[1] != d:
    raise SystemExit(f"--data has {X.shape[1]} variables, --dags graphs of {d}")


class GraphPolicy(eqx.Module):
    """[B, d, d] adjacency -> forward logits float[B, d^2 + 1] (edges i -> j at i d + j, stop)."""

    nodes: eqx.nn.Embedding
    edge_vec: jax.Array
    global_vec: jax.Array
    edge_fn: eqx.nn.MLP
    node_fn: eqx.nn.MLP
    global_fn: eqx.nn.MLP
    norms: tuple
    qkv: eqx.nn.Linear
    attn: eqx.nn.MultiheadAttention
    post_norms: tuple
    send: eqx.nn.MLP
    recv: eqx.nn.MLP
    stop: eqx.nn.MLP
    rounds: int = eqx.field(static=True)

    def __init__(self, d, e, heads, rounds, depth, key):
        ks = iter(jax.random.split(key, 12))
        tn = jax.nn.initializers.truncated_normal(stddev=1.0)
        mlp = lambda n_in, n_out: eqx.nn.MLP(n_in, n_out, e, depth, key=next(ks))  # noqa: E731
        self.nodes = eqx.nn.Embedding(d, e, key=next(ks))
        self.edge_vec, self.global_vec = tn(next(ks), (e,)), tn(next(ks), (e,))
        self.edge_fn, self.node_fn, self.global_fn = mlp(4 * e, e), mlp(4 * e, e), mlp(3 * e, e)
        self.norms = tuple(eqx.nn.LayerNorm(e) for _ in range(3))
        self.qkv = eqx.nn.Linear(e, 3 * e, key=next(ks))
        self.attn = eqx.nn.MultiheadAttention(heads, e, key=next(ks))
        self.post_norms = (eqx.nn.LayerNorm(e), eqx.nn.LayerNorm(e))
        self.send, self.recv, self.stop = mlp(e, e), mlp(e, e), mlp(e, 1)
        self.rounds = rounds

    def __call__(self, adj):
        B, n, _ = adj.shape
        cap = B * n * (n - 1) // 2  # the most edges B DAGs can have; the rest pad to node B n
        g, src, dst = jnp.nonzero(adj, size=cap, fill_value=0)
        m = jnp.sum(adj)
        real = jnp.arange(cap) < m
        pad_node = B * n
        e = self.edge_vec.shape[0]
        graph = jraph.GraphsTuple(
            nodes=jax.vmap(self.nodes)(jnp.append(jnp.tile(jnp.arange(n), B), 0)),
            edges=jnp.broadcast_to(self.edge_vec, (cap, e)),
            globals=jnp.broadcast_to(self.global_vec, (B + 1, e)),
            senders=jnp.where(real, g * n + src, pad_node),
            receivers=jnp.where(real, g * n + dst, pad_node),
            n_node=jnp.append(jnp.full((B,), n), 1),
            n_edge=jnp.append(jnp.sum(adj, (1, 2)), cap - m))
        net = jraph.GraphNetwork(
            update_edge_fn=jraph.concatenated_args(jax.vmap(self.edge_fn)),
            update_node_fn=jraph.concatenated_args(jax.vmap(self.node_fn)),
            update_global_fn=jraph.concatenated_args(jax.vmap(self.global_fn)))
        ln = lambda norm, x: jax.vmap(norm)(x)  # noqa: E731
        for _ in range(self.rounds):
            upd = net(graph)
            graph = graph._replace(nodes=ln(self.norms[0], graph.nodes + upd.nodes),
                                   edges=ln(self.norms[1], graph.edges + upd.edges),
                                   globals=ln(self.norms[2], graph.globals + upd.globals))
        h = jax.vmap(self.qkv)(graph.nodes[:pad_node]).reshape(B, n, 3 * e)
        q, k, v = jnp.split(h, 3, axis=-1)
        h = ln(self.post_norms[0], jax.vmap(self.attn)(q, k, v).reshape(B * n, e))
        glob = ln(self.post_norms[1], graph.globals[:B])
        s = jax.vmap(self.send)(h).reshape(B, n, e)
        r = jax.vmap(self.recv)(h).reshape(B, n, e)
        edges = jnp.einsum("bie,bje->bij", s, r).reshape(B, n * n)
        return jnp.concatenate([edges, jax.vmap(self.stop)(glob)], axis=-1)


prior = gfnx.reward.UniformDAGPrior(num_variables=d)
likelihood = gfnx.reward.BGeScore(data=jnp.asarray(X), mean_obs=jnp.zeros(d), alpha_mu=1.0,
                                  alpha_w=None)
env = gfnx.DAGEnvironment(gfnx.DAGRewardModule(prior=prior, likelihood=likelihood),
                          num_variables=d)
env_params = env.init(jax.random.PRNGKey(1))
key = jax.random.PRNGKey(args.seed)
key, k_net = jax.random.split(key)
model = GraphPolicy(d, args.emb, args.heads, args.gnn_layers, args.mlp_layers, k_net)
params, static = eqx.partition(model, eqx.is_array)
tx = optax.adam(args.lr)
eps_at = optax.linear_schedule(args.start_eps, args.end_eps, args.exploration_steps)


def logits_of(p, obs):
    return eqx.combine(p, static)(obs)


def log_pf(p, obs, state):
    return jax.nn.log_softmax(gfnx.utils.mask_logits(logits_of(p, obs),
                                                     env.get_invalid_mask(state, env_params)), -1)


def mdb_loss(p, target, tr):
    lp = log_pf(p, tr.obs, tr.state)
    lp_next = log_pf(target, tr.next_obs, tr.next_state)
    lp_a = jnp.take_along_axis(lp, tr.action[:, None], -1)[:, 0]
    inv_b = env.get_invalid_backward_mask(tr.next_state, env_params)  # uniform P_B
    lpb = -jnp.log(jnp.maximum(jnp.sum(~inv_b, -1), 1).astype(lp.dtype))
    delta = env.reward_module.delta_score(tr.state, tr.action, tr.next_state, env_params)
    skip = tr.done | tr.pad
    err = jnp.where(skip, 0.0, lp_next[:, -1] + lp_a - lp[:, -1] - lpb - delta)
    return optax.huber_loss(err).sum() / jnp.sum(~skip)


def one_step(i, carry):
    p, target, o, k = carry
    k, k_roll = jax.random.split(k)
    eps = eps_at(i)

    def policy_fn(rng, obs, pp):
        lg = logits_of(pp, obs)
        explore = jax.random.bernoulli(rng, eps, (lg.shape[0],))
        return jnp.where(explore[:, None], 0.0, lg), {}

    traj, _ = gfnx.utils.forward_rollout(k_roll, args.batch, policy_fn, p, env, env_params)
    tr = gfnx.utils.split_traj_to_transitions(traj)
    grads = jax.grad(mdb_loss)(p, target, tr)
    upd, o = tx.update(grads, o, p)
    p = optax.apply_updates(p, upd)
    target = jax.tree.map(lambda a, b: jnp.where(i % args.target_every == 0, a, b), p, target)
    return p, target, o, k


@jax.jit
def run(carry, start, n):
    return jax.lax.fori_loop(start, start + n, one_step, carry)


# every DAG of the caller's enumeration as a gfnx state: closure_T[i, j] = (j reaches i)
reach = np.broadcast_to(np.eye(d, dtype=bool), DAGS.shape).copy()
for _ in range(d):
    reach = reach | (np.einsum("gij,gjk->gik", reach.astype(np.int32), DAGS.astype(np.int32)) > 0)
CHUNK = 1024
n_pad = -G % CHUNK
adj_all = jnp.asarray(np.concatenate([DAGS, np.zeros((n_pad, d, d), bool)]))
all_states = gfnx.DAGEnvState(
    adjacency_matrix=adj_all,
    closure_T=jnp.asarray(np.concatenate([reach.transpose(0, 2, 1),
                                          np.broadcast_to(np.eye(d, dtype=bool), (n_pad, d, d))])),
    is_terminal=jnp.zeros(G + n_pad, bool), is_initial=jnp.asarray(adj_all.sum((1, 2)) == 0),
    is_pad=jnp.zeros(G + n_pad, bool))


@jax.jit
def pf_table(p):
    chunks = jax.tree.map(lambda x: x.reshape((-1, CHUNK) + x.shape[1:]), all_states)
    lp = jax.lax.map(lambda s: log_pf(p, env.get_obs(s, env_params), s), chunks)
    return jnp.exp(lp.reshape(G + n_pad, -1)[:G])


os.makedirs(args.tables, exist_ok=True)
term = all_states.replace(is_terminal=jnp.ones(G + n_pad, bool))
np.save(os.path.join(args.tables, "log_reward.npy"),
        np.asarray(jax.jit(env.reward_module.log_reward)(term, env_params))[:G])

carry = (params, params, tx.init(params), key)
carry = jax.block_until_ready(run(carry, 0, 1))
t_first = now()
pf_table(carry[0]).block_until_ready()  # compile the export outside the timings
evals = []
eval_s = now() - t_first
steps, train_s = 1, 0.0
while steps < args.steps and train_s < args.max_seconds:
    n = min(args.eval_every - steps % args.eval_every, args.steps - steps)
    t = now()
    carry = jax.block_until_ready(run(carry, steps, n))
    train_s += now() - t
    steps += n
    t_e = now()
    np.save(os.path.join(args.tables, f"pf_{len(evals)}.npy"), np.asarray(pf_table(carry[0])))
    evals.append({"step": steps, "t_s": round(t_e - eval_s, 4)})
    eval_s += now() - t_e
write(args.out, {"lib": "gfnx", "version": gfnx.__version__ if hasattr(gfnx, "__version__")
                 else "0.0.1", "jax": jax.__version__, "jraph": jraph.__version__,
                 "device": str(jax.devices()[0]), "t_import_s": round(t_import, 3),
                 "t_first_step_s": round(t_first, 3), "steps": steps - 1,
                 "train_s": round(train_s, 4), "its": round((steps - 1) / max(train_s, 1e-9), 3),
                 "evals": evals, "eval_s": round(eval_s, 3),
                 "eps_final": float(eps_at(steps - 1))})
