"""gfnem_jax worker for ``benchmarks/race.py --dag``: DAG-GFlowNet's modified detailed balance on
d = 5 at gfnx's mdb_dag configuration (its ``baselines/configs/mdb_dag.yaml``: 128 parallel
environments, an Erdos-Renyi graph of one expected edge per node, 100 observations of noise scale
0.316, BGe with alpha_mu 1, uniform structure prior).

Trains what ``gfnem train dag --loss db --flow stop`` trains (our MLP policy, uniform P_B,
eps-uniform exploration ``--epsilon``), in chunks of ``--eval-every`` updates, and after each
chunk scores the sampler by OUR exact enumeration: the sampler's probability of every one of the
29,281 DAGs (dynamic programme, no sampling) against the exact posterior, JSD in float64. As the
race protocol asks (common_cli), evaluation time is excluded from train_s, its and the evals' t_s.
Writes JSON: lib, t_import_s, t_first_step_s, steps, train_s, its, evals [{step, t_s}], jsd [...],
and, after training, OUT.npz with what the peer must be given and scored against: the observations
``data`` float64[N, d], every DAG ``adjacency`` uint8[G, d, d] (our enumeration's order), their
``log_score`` and the exact ``posterior`` (float64[G]).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, ours_ready, write  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--d", type=int, default=5)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--steps", type=int, default=4000)
p.add_argument("--eval-every", type=int, default=100)
p.add_argument("--max-seconds", type=float, default=1e9)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--epsilon", type=float, default=0.1)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--noise-scale", type=float, default=0.316)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
p.add_argument("--compile-cache", default=None)
p.add_argument("--out", required=True)
args = p.parse_args()
if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gfnem_jax import loop  # noqa: E402
from gfnem_jax.dag import posterior as dag_posterior  # noqa: E402
from gfnem_jax.experiments import dag, runner  # noqa: E402

t_import = ours_ready(args)
s = dag.Settings(num_nodes=args.d, edge_prob=min(1.0, 2.0 / (args.d - 1)),  # ER1
                 noise_scale=args.noise_scale, n_obs=100, loss="db", flow="stop",
                 epsilon=args.epsilon, batch_size=args.batch, lr=args.lr, hidden=args.hidden,
                 steps=args.steps, seed=args.seed)
s.validate()
env, gfn, optim = runner.build(s.to_config())
exact, _, _ = runner.make_evaluator(env, gfn, None)
G = env.num_dags()
adj_all, log_score, post = dag_posterior.exact_posterior(env.local_table())
state, tx = runner.init_state(gfn, optim, args.seed)
chunk = loop.make_chunk(runner.make_step(gfn, tx, s.batch_size), args.eval_every)
one = loop.make_chunk(runner.make_step(gfn, tx, s.batch_size), 1)
t0 = now()
state, _ = one(state)  # the first step (compilation included)
jax.block_until_ready(state)
t_first = now()
evals, jsds, train_s, done = [], [], 0.0, 1
while done < args.steps and train_s < args.max_seconds:
    t = time.perf_counter()
    state, _ = chunk(state)
    jax.block_until_ready(state)
    train_s += time.perf_counter() - t
    done += args.eval_every
    _, pr = exact(state.sampler)
    q = np.asarray(pr, np.float64)[G:]
    jsds.append(dag_posterior.jsd(q / q.sum(), post))
    evals.append({"step": done, "t_s": round(t_first + train_s, 4)})
# the chunk's compilation is inside the first chunk's time: its rate from the later chunks
its = ((done - 1 - args.eval_every) / max(train_s - (evals[0]["t_s"] - t_first), 1e-9)
       if len(evals) > 1 else args.eval_every / train_s)
np.savez(args.out + ".npz", data=dag.observations(s.env())[0],
         adjacency=np.asarray(adj_all, np.uint8), log_score=log_score, posterior=post)
write(args.out, {"lib": "gfnem_jax", "jax": jax.__version__, "device": str(jax.devices()[0]),
                 "t_import_s": round(t_import, 3), "t_first_step_s": round(t_first, 3),
                 "steps": done, "train_s": round(train_s, 4), "its": round(its, 3),
                 "evals": evals, "jsd": jsds, "settings": s.to_config()})
