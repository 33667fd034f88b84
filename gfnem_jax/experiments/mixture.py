"""`gfnem train mixture`: GFlowNet-EM vs exact EM vs mean-field VI-EM on the hierarchical mixture.

All three methods start from the same initialization (C distinct data points drawn from the seed)
and share the M-step code path (``gfnem_jax.em.m_update``, SGD at ``--lr-m``). Writes to --out:
  config.json     every setting (``MixtureSettings``);
  data.npy        the data, float32[N, 2] (N = --n-data, 4000 by default);
  metrics.jsonl   one row per step / iteration: {"method", "step", "loglik", ...}; GFlowNet-EM
                  rows also hold "loss" (the GFlowNet loss), "m_step" (whether an M-step ran),
                  "e_step", "ema", "threshold", "sleep", "ls_accept";
  params.npz      theta of each method, the initialization and the GFlowNet's parameters;
  summary.json    {"loglik": {gflownet_em, exact_em, mean_field_em, generating}, "means":
                  {method: [[x, y]] * C}, gaps, TV of the final GFlowNet posterior, counts};
  mixture.png     the data, the true means, the initialization and each method's fit;
  timing.json     wall-clock seconds (kept out of summary.json so that it is reproducible);
  checkpoint/     the GFlowNet-EM loop state (``gfnem_jax.run_dir``'s policy); ``--resume``
                  continues from the latest one exactly (the baselines are recomputed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import distributed as D
from gfnem_jax import driver, em, keys, run_dir, sizes
from gfnem_jax.config import retune, setting
from gfnem_jax.groups import (EMScheduleSettings, ExplorationSettings, MLPSettings,
                              OptimiserSettings)

NAME = "mixture"
HELP = ("GFlowNet-EM on the hierarchical Gaussian mixture (4 superclusters x 4 petals), against "
        "exact EM and mean-field VI-EM from the same initialization")

@dataclasses.dataclass(frozen=True)
class MixtureSettings(EMScheduleSettings, ExplorationSettings, MLPSettings, OptimiserSettings,
                      run_dir.CheckpointSettings):
    """Every setting of ``gfnem train mixture`` (flags, validation and config.json come from here):
    the EM schedule, exploration, MLP and optimiser groups (``gfnem_jax.groups``) and these."""

    seed: int = setting(0, "seed of the data, the initialization and every key", min=0, max=2 ** 32 - 1)
    n_data: int = setting(4000, "number of data points", min=16)
    steps: int = setting(12000, "GFlowNet-EM steps (E- and M-steps together)", min=1)
    batch_size: int = setting(256, "data points per E-step", min=1)
    m_batch_size: int = setting(0, "data points per M-step, 0 = all", min=0)
    temperature: float = retune(ExplorationSettings, "temperature", 1.0,
                                help="E-step exploration: softmax temperature")
    epsilon: float = retune(ExplorationSettings, "epsilon", 0.1,
                            help="E-step exploration: uniform mixing")
    loss: str = setting("tb", "GFlowNet objective (conditional log Z(x))", choices=("tb", "subtb"))
    lam: float = setting(1.0, "SubTB lambda", gt=0)
    lr: float = retune(OptimiserSettings, "lr", 1e-2,
                       help="Adam learning rate of the GFlowNet policy")
    lr_logz: float = retune(OptimiserSettings, "lr_logz", 3e-2,
                            help="Adam learning rate of log Z(x)")
    lr_m: float = setting(0.1, "SGD learning rate of the M-step, every method", gt=0)
    hidden: int = retune(MLPSettings, "hidden", 128)
    em_iters: int = setting(500, "iterations of exact EM and of mean-field EM", min=1)
    mf_sweeps: int = setting(5, "mean-field coordinate-ascent sweeps per iteration", min=1)
    log_every: int = setting(500, "steps per jitted chunk / progress update", min=1)
    devices: int = setting(1, "split each batch over this many devices", min=1)
    plot: bool = setting(True, "write mixture.png")

    def check(self):
        D.check_devices(self.devices)
        self.em_config().validate(self.n_data, 2, True, self.devices)

    def em_config(self) -> em.EMConfig:
        return EMScheduleSettings.em_config(self, self.batch_size, self.m_batch_size, self.steps)


Settings = MixtureSettings


def _settings(cfg) -> MixtureSettings:
    s = cfg if isinstance(cfg, MixtureSettings) else MixtureSettings.from_dict(dict(cfg))
    s.validate()
    return s


def build_parts(s: MixtureSettings):
    """(model, env, gfn, gfn_tx, m_tx)."""
    from gfnem_jax import objectives
    from gfnem_jax.envs.sequence import Sequence
    from gfnem_jax.gflownet import GFlowNet
    from gfnem_jax.models.mixture import HierarchicalMixture
    from gfnem_jax.nets.mlp import MLPPolicy
    from gfnem_jax.optim import policy_optimizer
    model = HierarchicalMixture()
    env = Sequence(length=2, vocab=4)
    policy = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=s.hidden, n_layers=s.n_layers,
                       uniform_pb=True, conditional=True)
    gfn = GFlowNet(env, policy, objectives.get(s.loss, lam=s.lam), s.explore())
    params = gfn.init(jax.random.PRNGKey(0), jnp.zeros((2,), jnp.float32))
    gfn_tx = policy_optimizer(gfn, s.optim(), params)
    return model, env, gfn, gfn_tx, optax.sgd(s.lr_m)


def posterior_tv(model, env, gfn, params, theta, x) -> jax.Array:
    """float[]: mean_i TV(P_GFlowNet(z | x_i), p_theta(z | x_i)), exact (no sampling)."""
    from gfnem_jax import metrics
    table = metrics.transition_table(env)
    ti = env.terminal_indices()
    q = jax.vmap(lambda c: metrics.terminal_distribution(env, gfn.policy, params, table, cond=c)[ti])(x)
    return jnp.mean(0.5 * jnp.sum(jnp.abs(q - model.exact_posterior(theta, x)), axis=-1))


def build(settings) -> driver.Experiment:
    """The GFlowNet-EM run, with the two baselines computed before its first chunk and written
    first in metrics.jsonl (module docstring). settings: ``MixtureSettings`` or a dict of its
    fields."""
    from gfnem_jax import loop
    from gfnem_jax.experiments.mixture_baselines import run_exact_em, run_mean_field_em
    from gfnem_jax.models.mixture import GENERATING_MEANS, generate_data, latent_to_state
    s = _settings(settings)
    t_start = time.perf_counter()
    model, env, gfn, gfn_tx, m_tx = build_parts(s)
    x_np, _ = generate_data(model, s.seed, s.n_data)
    x = jnp.asarray(x_np)
    run_key = jax.random.PRNGKey(s.seed)
    theta0 = model.init_means(jax.random.fold_in(run_key, 1), x)
    ecfg = s.em_config()
    mesh = loop.make_mesh(s.devices)
    step = em.make_em_step(gfn, em.LatentModel(model.log_joint, model.sample), ecfg, gfn_tx, m_tx,
                           z_to_state=latent_to_state, mesh=mesh)
    params = gfn.init(keys.tagged(run_key, keys.PARAMS), x[0])
    state = loop.init_state(params, gfn_tx, theta0, m_tx, run_key)
    x_all = D.to_global(x, mesh)
    timing: Dict[str, float] = {}
    base: Dict[str, Any] = {}
    counts = {"done": 0, "m": 0}  # GFlowNet-EM steps logged, M-steps among them

    def make_chunk(n):
        compiled = loop.make_chunk(step, n, em.batch_fn(ecfg, s.n_data),
                                   eval_fn=lambda st, data: {"loglik": model.loglik(st.model, data)})
        return lambda st, data: compiled(D.to_global(st, mesh), x_all)

    def first_rows(st, kept):
        """Exact EM and mean-field EM (one lax.scan each), one row per iteration."""
        t0 = time.perf_counter()
        ex = jax.jit(run_exact_em, static_argnums=(0, 3, 4))(model, x, theta0, s.em_iters, s.lr_m)
        mf = jax.jit(run_mean_field_em, static_argnums=(0, 3, 4, 5))(
            model, x, theta0, s.em_iters, s.lr_m, s.mf_sweeps)
        base["exact_em"], base["mean_field_em"] = jax.device_get((ex, mf))
        timing["baselines_s"] = time.perf_counter() - t0
        rows = []
        for method, res in base.items():
            for i, ll in enumerate(np.asarray(res.loglik)):
                row = {"method": method, "step": i, "loglik": float(ll)}
                if i < len(res.m_loss):
                    row["m_loss"] = float(res.m_loss[i])
                    row["m_step"] = True
                rows.append(row)
        counts["done"] = int(st.step)
        counts["m"] = sum(bool(r.get("m_step")) for r in kept)
        timing["t0"] = time.perf_counter()
        return rows

    def summarize(m):
        counts["m"] += int(np.sum(m["m_step"]))
        return {"loglik": float(np.asarray(m["loglik"])[-1]), "M": counts["m"]}

    def log_rows(m, _):
        """One row per GFlowNet-EM step of the chunk (its metrics)."""
        n = len(np.asarray(m["loss"]))
        rows = [{"method": "gflownet_em", "step": counts["done"] + i + 1,
                 **{k: bool(v[i]) if v.dtype == bool else float(v[i])
                    for k, v in ((k, np.asarray(v)) for k, v in m.items())}} for i in range(n)]
        counts["done"] += n
        return rows

    def finish(state, rows, out, primary):
        ex, mf = base["exact_em"], base["mean_field_em"]
        timing["gflownet_em_s"] = time.perf_counter() - timing.pop("t0")
        gen = jnp.asarray(GENERATING_MEANS, jnp.float32)
        ll = {"gflownet_em": float(model.loglik(state.model, x)), "exact_em": float(ex.loglik[-1]),
              "mean_field_em": float(mf.loglik[-1]), "generating": float(model.loglik(gen, x))}
        tv = float(jax.jit(posterior_tv, static_argnums=(0, 1, 2))(model, env, gfn, state.sampler,
                                                                    state.model, x))
        means = {"gflownet_em": np.asarray(state.model).tolist(),
                 "exact_em": np.asarray(ex.theta).tolist(),
                 "mean_field_em": np.asarray(mf.theta).tolist(),
                 "generating": np.asarray(gen).tolist(), "init": np.asarray(theta0).tolist()}
        summary = {"loglik": ll, "means": means,
                   "gap_to_exact_em": {"gflownet_em": ll["exact_em"] - ll["gflownet_em"],
                                       "mean_field_em": ll["exact_em"] - ll["mean_field_em"]},
                   "posterior_tv_gflownet": tv, "steps": s.steps, "em_iters": s.em_iters,
                   "gflownet_m_steps": sum(bool(r.get("m_step")) for r in rows
                                           if r["method"] == "gflownet_em"),
                   "n_data": s.n_data, "seed": s.seed}
        timing["total_s"] = time.perf_counter() - t_start
        if primary:  # only process 0 writes the run files
            write_files(out, s, summary, state, x_np, timing)
        return {**summary, "timing": timing}

    return driver.Experiment(
        name="gflownet-em", settings=s, config=s.to_config(), state=state, make_chunk=make_chunk,
        summarize=summarize, log_rows=log_rows, first_rows=first_rows,
        kept_rows=lambda rows, done: [r for r in rows if r.get("method") == "gflownet_em"
                                      and r["step"] <= done],
        write_inputs=lambda out: np.save(os.path.join(out, "data.npy"), x_np),
        finish=finish, postfix=("loss", "loglik", "M"), report=report)


def report(res: Dict[str, Any]) -> Dict[str, Any]:
    """The line ``gfnem train mixture`` prints."""
    summ = res["summary"]
    return {"loglik": summ["loglik"], "gap_to_exact_em": summ["gap_to_exact_em"],
            "posterior_tv_gflownet": summ["posterior_tv_gflownet"],
            "seconds": round(summ["timing"]["total_s"], 1)}


def write_files(out: str, s: MixtureSettings, summary, state, x_np, timing) -> None:
    """summary.json, params.npz, mixture.png (``plot``) and timing.json."""
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    flat = {"theta_" + k: np.asarray(v, np.float32) for k, v in summary["means"].items()}
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.sampler))[0]
    for path, leaf in leaves:
        flat["gfn/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    np.savez(os.path.join(out, "params.npz"), **flat)
    if s.plot:
        plot(os.path.join(out, "mixture.png"), x_np, summary["means"], summary["loglik"])
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump(timing, f, indent=2, sort_keys=True)


def run(settings, out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """``driver.run(build(settings), ...)``: {"summary" (with "timing"), "state", "final"}."""
    res = driver.run(build(settings), out, progress, resume)
    res["timing"] = res["summary"].pop("timing")
    return res


def plot(path: str, x: np.ndarray, means: Dict[str, Any], ll: Dict[str, float]) -> None:
    """PNG: the data, the true means, the initialization and each method's fitted means."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(x[:, 0], x[:, 1], s=1, c="0.7", label="data")
    style = {"generating": ("*", 260, "gold"), "init": ("x", 60, "black"),
             "exact_em": ("o", 110, "tab:blue"), "mean_field_em": ("s", 70, "tab:red"),
             "gflownet_em": ("P", 60, "tab:green")}
    for k, (mk, s, c) in style.items():
        m = np.asarray(means[k])
        lab = k if k not in ll else f"{k} ({ll[k]:.4f} nats/pt)"
        edge = {} if mk == "x" else {"edgecolors": "k", "linewidths": 0.5}
        ax.scatter(m[:, 0], m[:, 1], marker=mk, s=s, c=c, label=lab, **edge)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    ax.set_title("hierarchical mixture: supercluster means")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


memory_estimate = sizes.mixture_memory  # the lower bound gfnem train checks before any work
