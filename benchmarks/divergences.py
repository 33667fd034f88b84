"""Divergence estimators: gradient quality and convergence (da Silva et al. 2024, Malkin et al. 2023).

For each environment x objective x control variate x batch size, at a fixed parameter point (a
short TB warm start, so the policy is not uniform), from M independent batches:

  tr_cov      trace of the covariance of the flattened policy gradient (log Z excluded)
  cos_1024    mean cosine between a small-batch gradient and one 1024-trajectory gradient
  cos_exact   cosine between the mean of the M gradients and the exact gradient of the objective's
              divergence, computed by dynamic programming over the enumerated state DAG
  norm_ratio  |mean gradient| / (scale * |exact gradient|), scale the estimator's known constant
              (2 for TB, Z for unnormalized forward KL; none for rescaled Tsallis)
  noise       sqrt(tr_cov / M) / (scale * |exact|): the error of the mean expected from variance
              alone, so that cos_exact / norm_ratio deviations larger than this are bias.

Then the convergence comparison: each objective (its default control variate) trained at equal
step budgets and batch size over several seeds, exact L1 to the target against steps and against
seconds (compile time excluded and reported separately).

The backward policy is fixed and uniform here (P_B = 1 on the tree-shaped sequences anyway), so the
target P* is fixed and every estimator's exact counterpart is a gradient in the P_F parameters.

Outputs (``--out``, default bench_out/divergences): results.json, results.md, grad_variance.png,
convergence_<env>.png.

    python benchmarks/divergences.py --quick          # ~2-3 min on 2 CPU cores
    gfnem bench divergences --envs sets --M 32        # subsets
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gfnem_jax import metrics, objectives
from gfnem_jax.envs.base import masked_log_softmax
from gfnem_jax.experiments import runner
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.sampling import Exploration
from gfnem_jax import loop
from gfnem_jax.experiments.runner import init_state, make_step
from gfnem_jax.optim import OptimConfig

ENVS = {
    "sets": ("sets", {"set_size": 12, "k": 6, "reward_seed": 0, "reward_temperature": 1.0}),
    "sequences": ("sequences", {"length": 6, "vocab": 4, "reward_seed": 0, "reward_temperature": 1.0}),
    "hypergrid": ("hypergrid", {"ndim": 2, "height": 8, "r0": 0.1, "r1": 0.5, "r2": 2.0}),
}

# (objective, option overrides, label); the first of each objective is its "no control variate"
# reference for the variance-reduction table.
VARIANTS = [
    ("tb", {}, "tb"),
    ("reverse_kl", {"baseline": "none"}, "reverse_kl/none"),
    ("reverse_kl", {"baseline": "mean"}, "reverse_kl/mean"),
    ("reverse_kl", {"baseline": "loo"}, "reverse_kl/loo"),
    ("reverse_kl", {"baseline": "global"}, "reverse_kl/global"),
    ("forward_kl", {"normalized": True}, "forward_kl/self-norm"),
    ("forward_kl", {"normalized": False}, "forward_kl/unnorm"),
    ("renyi", {"control_variate": "none"}, "renyi/none"),
    ("renyi", {"control_variate": "loo"}, "renyi/loo"),
    ("tsallis", {"control_variate": "none"}, "tsallis/none"),
    ("tsallis", {"control_variate": "loo"}, "tsallis/loo"),
    ("alpha_kl", {"control_variate": "none"}, "alpha_kl/none"),
    ("alpha_kl", {"control_variate": "loo_mean"}, "alpha_kl/loo_mean"),
    ("alpha_kl", {"control_variate": "loo_logmeanexp"}, "alpha_kl/loo_logmeanexp"),
    ("wake_sleep", {}, "wake_sleep"),
]
QUICK_VARIANTS = ["tb", "reverse_kl/none", "reverse_kl/loo", "renyi/none", "renyi/loo",
                  "forward_kl/self-norm"]

# Convergence comparison: each objective with its default control variate.
CONVERGENCE = [
    ("tb", {}, "tb"),
    ("reverse_kl", {"baseline": "loo"}, "reverse_kl/loo"),
    ("forward_kl", {"normalized": True}, "forward_kl/self-norm"),
    ("renyi", {"control_variate": "loo"}, "renyi/loo"),
    ("tsallis", {"control_variate": "loo"}, "tsallis/loo"),
    ("alpha_kl", {"control_variate": "loo_mean"}, "alpha_kl/loo_mean"),
    ("wake_sleep", {}, "wake_sleep"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="divergences", description=__doc__.split("\n")[0])
    p.add_argument("--envs", default="sets,sequences", help=f"comma list of {', '.join(ENVS)} (default sets,sequences)")
    p.add_argument("--losses", default="", help="comma list of variant labels or objective names (default: all)")
    p.add_argument("--batch-sizes", default="16,64,256", help="gradient-quality batch sizes (default 16,64,256)")
    p.add_argument("--M", type=int, default=32, help="batches per covariance estimate (default 32)")
    p.add_argument("--big-batch", type=int, default=1024, help="reference batch for the cosine (default 1024)")
    p.add_argument("--warm-steps", type=int, default=200, help="TB warm-start steps before measuring gradients")
    p.add_argument("--steps", type=int, default=1500, help="training steps of each convergence run (default 1500)")
    p.add_argument("--train-batch", type=int, default=64, help="batch size of the convergence runs (default 64)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between exact-L1 evaluations (default 100)")
    p.add_argument("--l1-threshold", type=float, default=0.15,
                   help="report the steps / seconds until exact L1 <= this (default 0.15)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per convergence run (default 3)")
    p.add_argument("--alpha", type=float, default=0.5, help="alpha of renyi / tsallis / alpha_kl (default 0.5)")
    p.add_argument("--hidden", type=int, default=64, help="MLP width (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--skip-grad", action="store_true", help="skip the gradient-quality part")
    p.add_argument("--skip-train", action="store_true", help="skip the convergence part")
    p.add_argument("--quick", action="store_true",
                   help="small run: a few variants, batch sizes 16,64, M=16, 300 steps, 1 seed")
    p.add_argument("--out", default="bench_out/divergences", help="output directory")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.batch_sizes, a.M, a.steps, a.seeds, a.warm_steps = "16,64", 16, 300, 1, 100
        a.eval_every = 50
        if not a.losses:
            a.losses = ",".join(QUICK_VARIANTS)
    envs = [e for e in a.envs.split(",") if e]
    for e in envs:
        if e not in ENVS:
            p.error(f"--envs: unknown environment {e!r}; allowed: {', '.join(ENVS)}")
    a.env_list = envs
    labels = [v[2] for v in VARIANTS]
    sel = [s for s in a.losses.split(",") if s]
    for s in sel:
        if s not in labels and s not in {v[0] for v in VARIANTS}:
            p.error(f"--losses: unknown {s!r}; allowed: {', '.join(labels)} or an objective name")
    a.variants = [v for v in VARIANTS if not sel or v[2] in sel or v[0] in sel]
    a.conv = [v for v in CONVERGENCE if not sel or v[2] in sel or v[0] in sel]
    try:
        a.bs = [int(b) for b in a.batch_sizes.split(",") if b]
    except ValueError:
        p.error(f"--batch-sizes must be a comma list of integers, got {a.batch_sizes!r}")
    if any(b < 2 for b in a.bs):
        p.error(f"--batch-sizes: every batch size must be >= 2, got {a.bs}")
    if a.M < 2:
        p.error(f"--M must be >= 2, got {a.M}")
    if a.steps < a.eval_every or a.steps % a.eval_every:
        p.error(f"--steps ({a.steps}) must be a positive multiple of --eval-every ({a.eval_every})")
    return a


def build(env_name, loss, overrides, args):
    task, cfg = ENVS[env_name]
    mod = runner.task_module(task)
    env = mod.build_env(mod.Settings(**cfg).env())
    module = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=args.hidden, n_layers=2,
                       uniform_pb=True)
    obj = objectives.get(loss, **{"alpha": args.alpha, **overrides})
    return env, GFlowNet(env, module, obj, Exploration())


# ------------------------------------------------------------------------------------------------
# exact gradients by dynamic programming over the state DAG
class Exact:
    """Exact divergences between P_F and the fixed target P* (uniform P_B) as functions of params."""

    def __init__(self, env, gfn):
        self.env, self.gfn = env, gfn
        t = metrics.transition_table(env)
        self.table = t
        A = env.n_actions
        self.bact = jax.vmap(lambda s: jax.vmap(lambda a: env.backward_action(s, a))(jnp.arange(A)))(t.states)
        lr = jax.vmap(lambda s: env.log_reward(None, None, s))(t.states)
        self.log_r = jnp.where(t.terminal, lr, 0.0)
        self.log_z = jax.nn.logsumexp(jnp.where(t.terminal, lr, -jnp.inf))
        self.feats = jax.vmap(env.observe)(t.states)
        self.bmask = jax.vmap(env.backward_mask)(t.states)

    def edges(self, params):
        t = self.table
        out = jax.vmap(self.gfn.policy.apply, (None, 0, None))(params, self.feats, None)
        lpf = masked_log_softmax(out.fwd_logits, t.fmask)
        lpb_s = masked_log_softmax(out.bwd_logits, self.bmask)
        lpb = lpb_s[t.children, self.bact]
        return jnp.where(t.fmask, lpf, 0.0), jnp.where(t.fmask, lpb, 0.0)

    def _prop(self, w):
        return metrics._propagate(self.env, self.table, w)

    def reverse_kl(self, params):
        t = self.table
        lpf, lpb = self.edges(params)
        pf = jnp.where(t.fmask, jnp.exp(lpf), 0.0)
        reach = self._prop(pf)
        edge = jnp.sum(reach[:, None] * pf * (lpf - lpb))
        term = jnp.sum(jnp.where(t.terminal, reach * self.log_r, 0.0))
        return edge - term + self.log_z

    def target_flows(self, params):
        """P*-probability of every edge (no gradient: P_B is fixed)."""
        t = self.table
        _, lpb = self.edges(params)
        pb = jnp.where(t.fmask, jnp.exp(lpb), 0.0)
        term = jnp.where(t.terminal, jnp.exp(self.log_r - self.log_z), 0.0)
        F = term
        for _ in range(self.env.max_steps):
            F = term + jnp.sum(pb * F[t.children], axis=1)
        return jax.lax.stop_gradient(F[t.children] * pb)

    def forward_kl_surrogate(self, params, flows):
        """A function whose params-gradient is the exact grad KL(P* || P_F) (P_B fixed)."""
        lpf, _ = self.edges(params)
        return -jnp.sum(flows * lpf)

    def power_sum(self, params, alpha):
        """sum_tau P_F^alpha P*^(1-alpha)."""
        t = self.table
        lpf, lpb = self.edges(params)
        w = jnp.where(t.fmask, jnp.exp(alpha * lpf + (1 - alpha) * lpb), 0.0)
        P = self._prop(w)
        return jnp.sum(jnp.where(t.terminal, P * jnp.exp((1 - alpha) * (self.log_r - self.log_z)), 0.0))

    def gradient_fn(self, loss, opts):
        """(f, scale): params -> value whose gradient is the estimator's expectation / scale."""
        a = getattr(opts, "alpha", None)

        def fwd(p):
            return self.forward_kl_surrogate(p, self._flows)

        if loss == "tb":
            return self.reverse_kl, 2.0
        if loss == "reverse_kl":
            return self.reverse_kl, 1.0
        if loss in ("forward_kl", "wake_sleep", "reverse_wake_sleep"):
            scale = 1.0 if (loss != "forward_kl" or opts.normalized) else float(jnp.exp(self.log_z))
            return fwd, scale
        if loss == "renyi":
            return (lambda p: jnp.log(self.power_sum(p, a)) / (a - 1)), 1.0
        if loss == "tsallis":
            return (lambda p: (self.power_sum(p, a) - 1) / (a - 1)), None
        if loss == "alpha_kl":
            return (lambda p: (1 - a) * self.reverse_kl(p) + a * fwd(p)), 1.0
        raise ValueError(loss)

    def set_point(self, params):
        self._flows = self.target_flows(params)


def _policy_only(gfn, tree):
    """Zero the log Z leaves (as the policy declares them) so that only the policy's gradient is
    compared."""
    return jax.tree.map(lambda m, x: jnp.zeros_like(x) if m else x, gfn.policy.log_z_mask(tree), tree)


def flat_grad_fn(gfn, env, batch):
    def one(params, key):
        g = jax.grad(lambda p: gfn.loss(p, key, batch, env.log_reward)[0])(params)
        return ravel_pytree(_policy_only(gfn, g))[0]
    return one


def warm_start(env_name, args, steps, seed=0):
    env, gfn = build(env_name, "tb", {}, args)
    state, tx = init_state(gfn, OptimConfig(lr=args.lr), seed)
    if steps:
        state, _ = loop.make_chunk(make_step(gfn, tx, 64), steps)(state)
    return state.sampler


def grad_quality(args, bar, results):
    rows = []
    for env_name in args.env_list:
        params = warm_start(env_name, args, args.warm_steps)
        exact_cache = {}
        for loss, ov, label in args.variants:
            env, gfn = build(env_name, loss, ov, args)
            if env_name not in exact_cache:
                ex = Exact(env, gfn)
                ex.set_point(params)
                exact_cache[env_name] = ex
            ex = exact_cache[env_name]
            f, scale = ex.gradient_fn(loss, gfn.objective)
            g_exact = np.asarray(ravel_pytree(_policy_only(gfn, jax.grad(f)(params)))[0], np.float64)
            big = np.asarray(jax.jit(flat_grad_fn(gfn, env, args.big_batch))(params, jax.random.PRNGKey(10_000)),
                             np.float64)
            for B in args.bs:
                t0 = time.perf_counter()
                fn = jax.jit(jax.vmap(flat_grad_fn(gfn, env, B), (None, 0)))
                keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1 + B), i))(jnp.arange(args.M))
                G = np.asarray(fn(params, keys), np.float64)
                mean = G.mean(0)
                tr_cov = float(np.sum(G.var(0, ddof=1)))

                def cos(a, b):
                    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

                cos_big = float(np.mean([cos(g, big) for g in G]))
                ne = np.linalg.norm(g_exact)
                row = dict(env=env_name, loss=loss, variant=label, batch=B, M=args.M, tr_cov=tr_cov,
                           cos_1024=cos_big, cos_exact=cos(mean, g_exact),
                           norm_ratio=(float(np.linalg.norm(mean) / (scale * ne)) if scale else None),
                           noise=(float(math.sqrt(tr_cov / args.M) / (scale * ne)) if scale else None),
                           exact_norm=float(ne), seconds=round(time.perf_counter() - t0, 2))
                rows.append(row)
                bar.update(1)
                bar.set_postfix_str(f"{env_name} {label} B={B}", refresh=False)
    results["grad"] = rows
    # variance reduction: the objective's no-CV variant over each CV variant
    ref_of = {"reverse_kl": "reverse_kl/none", "renyi": "renyi/none", "tsallis": "tsallis/none",
              "alpha_kl": "alpha_kl/none"}
    red = []
    for r in rows:
        ref = ref_of.get(r["loss"])
        if ref is None or r["variant"] == ref:
            continue
        base = [q for q in rows if q["env"] == r["env"] and q["batch"] == r["batch"] and q["variant"] == ref]
        if base:
            red.append(dict(env=r["env"], variant=r["variant"], batch=r["batch"],
                            reduction=base[0]["tr_cov"] / max(r["tr_cov"], 1e-30)))
    results["variance_reduction"] = red


def convergence(args, bar, results):
    runs = []
    for env_name in args.env_list:
        for loss, ov, label in args.conv:
            for seed in range(args.seeds):
                env, gfn = build(env_name, loss, ov, args)
                exact, _, _ = runner.make_evaluator(env, gfn)
                state, tx = init_state(gfn, OptimConfig(lr=args.lr), seed)
                upd = make_step(gfn, tx, args.train_batch, state_index=False)
                t0 = time.perf_counter()
                chunk = loop.make_chunk(upd, args.eval_every).lower(state).compile()
                compile_s = time.perf_counter() - t0
                l1 = [float(exact(state.sampler)[0]["l1"])]
                steps, secs = [0], [0.0]
                train_s = 0.0
                for _ in range(args.steps // args.eval_every):
                    t1 = time.perf_counter()
                    state, m = chunk(state)
                    jax.block_until_ready(state.sampler)
                    train_s += time.perf_counter() - t1
                    l1.append(float(exact(state.sampler)[0]["l1"]))
                    steps.append(int(state.step))
                    secs.append(round(train_s, 4))
                    bar.update(args.eval_every)
                    bar.set_postfix_str(f"{env_name} {label} s{seed} L1={l1[-1]:.3f}", refresh=False)
                runs.append(dict(env=env_name, loss=loss, variant=label, seed=seed, steps=steps,
                                 seconds=secs, l1=l1, compile_s=round(compile_s, 2)))
    results["convergence"] = runs
    summ = []
    for env_name in args.env_list:
        for _, _, label in args.conv:
            rs = [r for r in runs if r["env"] == env_name and r["variant"] == label]
            if not rs:
                continue
            fin = np.array([r["l1"][-1] for r in rs])
            best = np.array([min(r["l1"]) for r in rs])
            summ.append(dict(env=env_name, variant=label, seeds=len(rs), final_l1_mean=float(fin.mean()),
                             final_l1_std=float(fin.std()), best_l1_mean=float(best.mean()),
                             steps_to_thr=_steps_to(rs, args.l1_threshold), seconds_to_thr=_secs_to(rs, args.l1_threshold),
                             train_s_mean=float(np.mean([r["seconds"][-1] for r in rs])),
                             compile_s_mean=float(np.mean([r["compile_s"] for r in rs]))))
    results["convergence_summary"] = summ


def _first(r, thr, key):
    for x, l in zip(r[key], r["l1"]):
        if l <= thr:
            return x
    return None


def _steps_to(rs, thr):
    v = [_first(r, thr, "steps") for r in rs]
    return None if any(x is None for x in v) else float(np.mean(v))


def _secs_to(rs, thr):
    v = [_first(r, thr, "seconds") for r in rs]
    return None if any(x is None for x in v) else float(np.mean(v))


def _fmt(x, f="{:.3g}"):
    return "-" if x is None else f.format(x)


def write_markdown(args, results, path):
    L = ["# Divergence estimators benchmark\n", f"settings: `{json.dumps(results['settings'])}`\n"]
    if "grad" in results:
        L += ["## Gradient quality (policy parameters, log Z excluded)\n",
              "| env | variant | B | tr Cov | cos vs 1024 | cos vs exact | norm ratio | noise |",
              "|---|---|---|---|---|---|---|---|"]
        for r in results["grad"]:
            L.append(f"| {r['env']} | {r['variant']} | {r['batch']} | {r['tr_cov']:.4g} | {r['cos_1024']:.3f} | "
                     f"{r['cos_exact']:.3f} | {_fmt(r['norm_ratio'])} | {_fmt(r['noise'])} |")
        L += ["", "## Variance reduction by control variates (tr Cov without / with)\n",
              "| env | variant | B | reduction |", "|---|---|---|---|"]
        for r in results["variance_reduction"]:
            L.append(f"| {r['env']} | {r['variant']} | {r['batch']} | {r['reduction']:.2f}x |")
        L.append("")
    if "convergence_summary" in results:
        s = results["settings"]
        L += [f"## Convergence: exact L1 after {s['steps']} steps, batch {s['train_batch']}, {s['seeds']} seed(s)\n",
              f"| env | variant | final L1 (mean ± std) | best L1 | steps to L1<={s['l1_threshold']} | train s to L1<={s['l1_threshold']} | train s | compile s |",
              "|---|---|---|---|---|---|---|---|"]
        for r in results["convergence_summary"]:
            L.append(f"| {r['env']} | {r['variant']} | {r['final_l1_mean']:.3f} ± {r['final_l1_std']:.3f} | "
                     f"{r['best_l1_mean']:.3f} | {_fmt(r['steps_to_thr'], '{:.0f}')} | {_fmt(r['seconds_to_thr'], '{:.2f}')} | "
                     f"{r['train_s_mean']:.1f} | {r['compile_s_mean']:.1f} |")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def plot(args, results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    if results.get("grad"):
        envs = args.env_list
        fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4.5), squeeze=False)
        for ax, e in zip(axes[0], envs):
            for _, _, label in args.variants:
                rs = [r for r in results["grad"] if r["env"] == e and r["variant"] == label]
                if rs:
                    ax.plot([r["batch"] for r in rs], [r["tr_cov"] for r in rs], "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tr Cov(grad)", title=e)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        p = os.path.join(out, "grad_variance.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    if results.get("convergence"):
        for e in args.env_list:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
            for _, _, label in args.conv:
                rs = [r for r in results["convergence"] if r["env"] == e and r["variant"] == label]
                if not rs:
                    continue
                l1 = np.array([r["l1"] for r in rs])
                st = np.array(rs[0]["steps"])
                sec = np.array([r["seconds"] for r in rs]).mean(0)
                for ax, x in zip(axes, (st, sec)):
                    (ln,) = ax.plot(x, l1.mean(0), label=label)
                    ax.fill_between(x, l1.min(0), l1.max(0), color=ln.get_color(), alpha=0.15)
            axes[0].set(xlabel="steps", ylabel="exact L1", title=f"{e}: L1 vs steps")
            axes[1].set(xlabel="training seconds (compile excluded)", ylabel="exact L1", title=f"{e}: L1 vs time")
            axes[1].legend(fontsize=7)
            fig.tight_layout()
            p = os.path.join(out, f"convergence_{e}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            files.append(p)
    return files


def main(argv=None):
    args = parse_args(argv)
    from tqdm.auto import tqdm
    os.makedirs(args.out, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("env_list", "batch_sizes", "M", "big_batch", "warm_steps", "steps",
                                              "train_batch", "eval_every", "seeds", "l1_threshold", "alpha", "hidden", "lr", "quick")}
    settings["device"] = str(jax.devices()[0])
    results = {"settings": settings}
    n_grad = 0 if args.skip_grad else len(args.env_list) * len(args.variants) * len(args.bs)
    n_train = 0 if args.skip_train else len(args.env_list) * len(args.conv) * args.seeds * args.steps
    t0 = time.perf_counter()
    if n_grad:
        with tqdm(total=n_grad, desc="gradient quality", file=sys.stderr, dynamic_ncols=True) as bar:
            grad_quality(args, bar, results)
    if n_train:
        with tqdm(total=n_train, desc="convergence (steps)", file=sys.stderr, dynamic_ncols=True) as bar:
            convergence(args, bar, results)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = os.path.join(args.out, "results.md")
    write_markdown(args, results, md)
    files = [] if args.no_plots else plot(args, results, args.out)
    print(f"wrote {os.path.join(args.out, 'results.json')}, {md}" + "".join(f", {p}" for p in files))
    print(open(md).read())


if __name__ == "__main__":
    main()
