"""gfnem_jax worker for benchmarks/race.py: the same HyperGrid run through ``runner.run``.

Trains exactly as ``gfnem train hypergrid`` does (one chunk of ``--eval-every`` updates per
``lax.scan``, our exact L1 after every chunk), with the peer's settings: network width and depth,
separate or shared torso, learning rates, batch size, R0. As the protocol asks (common_cli), the
evaluations' time is excluded from train_s, its and the evals' t_s, as the peers' workers do.
On-policy (no replay buffer). With ``--compile-cache DIR`` JAX's persistent compilation cache is
used (gfnem_jax.startup).
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, ours_ready, parser, write  # noqa: E402

p = parser(__doc__.split("\n")[0])
p.add_argument("--compile-cache", default=None, help="persistent compilation cache dir")
p.add_argument("--pack", type=int, default=None, help="runner's pack setting (default: its default)")
p.add_argument("--one-pass", action="store_true", help="runner's one_pass setting (differentiate "
               "through the rollout, no second pass over the states)")
p.add_argument("--no-compact", action="store_true", help="runner's compact off (every trajectory "
               "through the policy at every rollout step)")
args = p.parse_args()
if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gfnem_jax.experiments import runner  # noqa: E402

t_import = ours_ready(args)
cfg = dict(task="hypergrid", env=dict(ndim=args.ndim, height=args.height, r0=args.r0, r1=args.r1,
                                      r2=args.r2),
           loss=args.loss, steps=args.steps, batch_size=args.batch, lr=args.lr,
           lr_logz=args.lr_logz, hidden=args.hidden, n_layers=args.n_hidden,
           shared_torso=args.shared, seed=args.seed, log_every=args.eval_every)
if args.loss == "soft_q":  # the RL view against gfnx's soft DQN: a uniform P_B, its tau
    cfg.update(uniform_pb=True, tau=args.tau)
if args.pack is not None:
    cfg["pack"] = args.pack
if args.one_pass:
    cfg["one_pass"] = True
if args.no_compact:
    cfg["compact"] = False
# The protocol (common_cli) excludes evaluation from train_s, its and the evals' t_s, as the peers'
# workers do: time each exact evaluation the runner makes after a chunk, and take it off.
eval_s = []
states = []  # exact mean number of states a trajectory of the policy visits, per evaluation
_make_evaluator = runner.make_evaluator


def timed_evaluator(env, gfn, extra=None):
    exact, table, target = _make_evaluator(env, gfn, extra)
    # terminal state x (index H^d + row-major index of x): sum(x) + 2 states (s_0 .. x, stop)
    n = env.height ** env.ndim
    visits = np.indices((env.height,) * env.ndim).reshape(env.ndim, -1).sum(0) + 2.0

    def timed(params):
        t = now()
        out = jax.block_until_ready(exact(params))
        p = np.asarray(out[1], np.float64)[n:]
        states.append(float((p * visits).sum() / max(p.sum(), 1e-30)))
        eval_s.append((eval_s[-1] if eval_s else 0.0) + now() - t)
        return out

    return timed, table, target


runner.make_evaluator = timed_evaluator
with tempfile.TemporaryDirectory() as out:
    t_run = now()
    runner.run(cfg, out, progress=False)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
assert len(eval_s) == len(rows), (len(eval_s), len(rows))
for r, e in zip(rows, eval_s):  # seconds of training (compilation included), evaluation excluded
    r["train_s"] = r["wall_s"] - e
first, last = rows[0], rows[-1]
chunk = first["step"]
if len(rows) > 1:
    its = (last["step"] - first["step"]) / max(last["train_s"] - first["train_s"], 1e-9)
else:
    its = chunk / first["train_s"]
# the first logged row comes after compile + one chunk: take off the chunk's other steps
t_first = t_run + first["train_s"] - (chunk - 1) / its
write(args.out, {"lib": "gfnem_jax", "jax": jax.__version__, "device": str(jax.devices()[0]),
                 "t_import_s": round(t_import, 3), "t_first_step_s": round(t_first, 3),
                 "compile_cache": args.compile_cache, "steps": last["step"] - first["step"],
                 "train_s": round(last["train_s"] - first["train_s"], 4), "its": round(its, 3),
                 "eval_s": round(eval_s[-1], 4),
                 "evals": [{"step": r["step"], "t_s": round(t_run + r["train_s"], 4)} for r in rows],
                 "l1": [r.get("l1") for r in rows], "states": states[-len(rows):]})
