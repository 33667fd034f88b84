"""torchgfn worker for benchmarks/race.py: HyperGrid with torchgfn's public API only.

The equivalent of torchgfn's hypergrid tutorial at its defaults: K-hot states, separate P_F and
P_B MLPs (``gfn.utils.modules.MLP``, 256 wide), Adam lr 1e-3 with log Z at lr 0.1, batch 16,
an optional replay buffer (``gfn.containers.ReplayBuffer``) whose samples are trained on, and
the objective picked by --loss (tb, db, subtb, logvar). Runs inside the torchgfn side venv.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common_cli import now, parser, write  # noqa: E402

p = parser(__doc__.split("\n")[0])
p.add_argument("--threads", type=int, default=0,
               help="torch intra-op threads (0 = torch's default: all cores)")
args = p.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gfn  # noqa: E402
from gfn.containers import ReplayBuffer  # noqa: E402
from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator  # noqa: E402
from gfn.gflownet import (DBGFlowNet, LogPartitionVarianceGFlowNet, SubTBGFlowNet,  # noqa: E402
                          TBGFlowNet)
from gfn.gym import HyperGrid  # noqa: E402
from gfn.preprocessors import KHotPreprocessor  # noqa: E402
from gfn.samplers import Sampler  # noqa: E402
from gfn.utils.modules import MLP  # noqa: E402

t_import = now()
if args.threads > 0:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
np.random.seed(args.seed)
dev = torch.device("cuda" if args.device == "gpu" and torch.cuda.is_available() else "cpu")

env = HyperGrid(ndim=args.ndim, height=args.height,
                reward_fn_kwargs={"R0": args.r0, "R1": args.r1, "R2": args.r2}, device=dev)
pre = KHotPreprocessor(height=args.height, ndim=args.ndim)
pf_mod = MLP(input_dim=pre.output_dim, output_dim=env.n_actions, hidden_dim=args.hidden,
             n_hidden_layers=args.n_hidden)
pb_mod = MLP(input_dim=pre.output_dim, output_dim=env.n_actions - 1, hidden_dim=args.hidden,
             n_hidden_layers=args.n_hidden, trunk=pf_mod.trunk if args.shared else None)
pf = DiscretePolicyEstimator(pf_mod, env.n_actions, preprocessor=pre, is_backward=False)
pb = DiscretePolicyEstimator(pb_mod, env.n_actions, preprocessor=pre, is_backward=True)


def log_flow():
    return ScalarEstimator(MLP(input_dim=pre.output_dim, output_dim=1, hidden_dim=args.hidden,
                               n_hidden_layers=args.n_hidden), preprocessor=pre)


if args.loss == "tb":
    gfl = TBGFlowNet(pf=pf, pb=pb, init_logZ=0.0)
elif args.loss == "db":
    gfl = DBGFlowNet(pf=pf, pb=pb, logF=log_flow())
elif args.loss == "subtb":
    gfl = SubTBGFlowNet(pf=pf, pb=pb, logF=log_flow(), weighting="geometric_within", lamda=0.9)
elif args.loss == "logvar":
    gfl = LogPartitionVarianceGFlowNet(pf=pf, pb=pb)
else:
    raise SystemExit(f"unknown --loss {args.loss}")
gfl = gfl.to(dev)
sampler = Sampler(estimator=pf)
opt = torch.optim.Adam(gfl.pf_pb_parameters(), lr=args.lr)
logz = list(gfl.logz_parameters()) if hasattr(gfl, "logz_parameters") else []
if logz:
    opt.add_param_group({"params": logz, "lr": args.lr_logz})
logf = [p for n, p in gfl.named_parameters() if n.startswith("logF")]
if logf:
    opt.add_param_group({"params": logf, "lr": args.lr})
buffer = ReplayBuffer(env, capacity=args.replay) if args.replay > 0 else None

# every non-terminal grid point, row-major (coordinate 0 most significant)
grid = torch.tensor(np.stack(np.unravel_index(np.arange(args.height ** args.ndim),
                                              (args.height,) * args.ndim), -1), device=dev)


@torch.no_grad()
def pf_table():
    feats = pre(env.States(grid))
    logits = pf_mod(feats)
    legal = torch.cat([grid < args.height - 1, torch.ones_like(grid[:, :1], dtype=torch.bool)], 1)
    logits = logits.masked_fill(~legal, -float("inf"))
    return torch.softmax(logits, -1).cpu().numpy()


def step():
    traj = sampler.sample_trajectories(env, n=args.batch, save_logprobs=buffer is None,
                                       save_estimator_outputs=False)
    samples = gfl.to_training_samples(traj)
    if buffer is not None:
        buffer.add(samples)
        samples = buffer.sample(args.batch)
    opt.zero_grad()
    loss = gfl.loss(env, samples, recalculate_all_logprobs=buffer is not None)
    loss.backward()
    opt.step()
    return loss


tables, evals = [], []
eval_s = 0.0
step()
if dev.type == "cuda":
    torch.cuda.synchronize()
t_first = now()
train_s, steps = 0.0, 1
while steps < args.steps and train_s < args.max_seconds:
    t = now()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_s += now() - t
    steps += 1
    if steps % args.eval_every == 0 or steps == args.steps:
        t_e = now()
        tables.append(pf_table())
        evals.append({"step": steps, "t_s": round(t_e - eval_s, 4)})
        eval_s += now() - t_e
if not evals or evals[-1]["step"] != steps:  # stopped by --max-seconds: evaluate where it stands
    evals.append({"step": steps, "t_s": round(now() - eval_s, 4)})
    tables.append(pf_table())
np.savez_compressed(args.out + ".npz", *tables)
write(args.out, {"lib": "torchgfn", "version": gfn.__version__ if hasattr(gfn, "__version__") else "?",
                 "torch": torch.__version__, "device": str(dev), "t_import_s": round(t_import, 3),
                 "t_first_step_s": round(t_first, 3), "steps": steps - 1,
                 "train_s": round(train_s, 4), "its": round((steps - 1) / max(train_s, 1e-9), 3),
                 "evals": evals, "eval_s": round(eval_s, 3)})
