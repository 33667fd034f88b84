"""Train a GFlowNet on an enumerable task (hypergrid, sets, sequences) and write a run directory.

A run directory holds config.json (everything needed to rebuild the run), metrics.jsonl (one JSON
object per logged step) and checkpoint/step_N (orbax; ``gfnem_jax.run_dir`` owns the files, the
resume check and the checkpoint policy). ``gfnem sample`` rebuilds the sampler
from it. A task is a thin module of ``gfnem_jax.experiments`` declaring its environment's settings
(a ``config.Settings`` dataclass), ``build_env`` and ``mode_indices``; its run kind's ``Settings``
add the training settings shared by every task (``TrainSettings``, by ``task_settings``) and its
``build`` is ``experiment`` (a ``driver.Experiment``). The run is the one alternating loop of ``gfnem_jax.loop`` with
a sampler update only; the environment's reward parameters ride in the loop state's model slot
(not trained), so they are arguments of the compiled step, not constants.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import checkpoint, distributed, driver, keys, loop, metrics, run_dir
from gfnem_jax.config import Settings, setting
from gfnem_jax.groups import (ExplorationSettings, MLPSettings, ObjectiveSettings,
                              OptimiserSettings)
from gfnem_jax.gflownet import GFlowNet, replay_memory, sampler_update
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.optim import OptimConfig, policy_optimizer



def tasks():
    """The registered run kinds that are tasks of this module (``task_settings``): their build is
    ``experiment``, or they declare ``TASK = True`` (a build of their own that uses it for some
    settings, e.g. dag for graphs too large to enumerate); ``load_run`` and ``sample`` take them."""
    from gfnem_jax import experiments
    return tuple(k for k in experiments.KINDS
                 if getattr(experiments.kind(k), "build", None) is experiment
                 or getattr(experiments.kind(k), "TASK", False))


def task_module(name: str):
    """The module of enumerable task ``name``; ValueError naming the allowed ones."""
    from gfnem_jax import experiments
    if name not in tasks():
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(tasks())}")
    return experiments.kind(name)


@dataclasses.dataclass(frozen=True)
class TrainSettings(ExplorationSettings, MLPSettings, OptimiserSettings, ObjectiveSettings,
                    run_dir.CheckpointSettings):
    """The settings of GFlowNet training shared by every enumerable task: the objective,
    optimiser, MLP policy and exploration groups (``gfnem_jax.groups``) and these."""

    steps: int = setting(2000, "number of gradient steps", min=1)
    batch_size: int = setting(64, "trajectories per step (global, over all devices)", min=1)
    uniform_pb: bool = setting(False, "fixed uniform backward policy instead of a learned one")
    shared_torso: bool = setting(True, "P_B and the flow head share P_F's MLP torso (off: each "
                                 "has its own, torchgfn's default)")
    seed: int = setting(0, "random seed; the same seed gives identical results", min=0, max=2 ** 32 - 1)
    devices: int = setting(1, "split each batch over this many devices (shard_map data parallelism)", min=1)
    pack: int = setting(16, "the loss pass computes only the real (not yet terminated) states, "
                        "in blocks of 1/PACK of the batch's states (1 = one pass over every "
                        "padded state); a speed setting, the loss is the same to float rounding",
                        min=1, max=64)
    compact: bool = setting(True, "the rollouts run the policy only on the trajectories still "
                            "running, in blocks of an eighth of the batch (off: every trajectory "
                            "at every step); a speed setting: the same draws and loss to float "
                            "rounding")
    one_pass: bool = setting(False, "differentiate through the sampling rollout instead of "
                             "evaluating its states again in a second pass (one policy pass per "
                             "state): the same loss and gradient. On a 2-core CPU about 10% "
                             "faster and 20% less memory at batch 1024 on the HyperGrid, slower "
                             "at batch 16 to 256")
    log_every: int = setting(100, "steps between logged rows (exact metrics computed there)", min=1)
    replay: int = setting(0, "replay buffer of this many trajectories (0 = off): each step adds its "
                          "batch and also trains on batch_size trajectories drawn uniformly from "
                          "the buffer; losses that take any behaviour policy only", min=0)

    def check(self):
        distributed.check_devices(self.devices, self.batch_size)
        self.objective().check_sampling(self.explore(), batch_size=self.batch_size)
        if self.one_pass and self.objective().edge_flows:
            raise ValueError("one_pass differentiates the trajectories' log-probabilities; loss "
                             "fm evaluates edge flows of every parent instead (allowed: one_pass "
                             "with any other loss)")
        if self.replay:
            why = ("one_pass differentiates its own rollout" if self.one_pass else
                   f"loss {self.loss} needs samples of the current policy"
                   if not self.objective().balance else
                   f"it must hold at least one batch of batch_size {self.batch_size}"
                   if self.replay < self.batch_size else None)
            if why:
                raise ValueError(f"replay {self.replay} is not allowed: {why}; allowed: replay 0, "
                                 f"or >= batch_size with a loss that takes any behaviour policy")
        if self.one_pass and self.objective().soft_values:
            raise ValueError(f"one_pass differentiates the rollout's flow head; loss {self.loss} "
                             f"reads the soft values of the forward logits instead (allowed: "
                             f"one_pass with a GFlowNet loss)")


def task_settings(name: str, env_cls):
    """The settings of run kind ``name``: its environment's settings ``env_cls`` and
    ``TrainSettings`` as one class (one flag per field). Its config.json nests the environment's
    fields under "env": ``{"task": name, "env": {...}, **training settings}``."""
    env_names = [f.name for f in dataclasses.fields(env_cls)]
    clash = set(env_names) & {f.name for f in dataclasses.fields(TrainSettings)}
    assert not clash, f"{env_cls.__name__} redeclares training settings {sorted(clash)}"

    @dataclasses.dataclass(frozen=True)
    class RunSettings(TrainSettings, env_cls):  # the environment's settings first
        def check(self):
            env_cls.check(self)
            TrainSettings.check(self)

        def env(self):
            return env_cls(**{k: getattr(self, k) for k in env_names})

        def train(self) -> TrainSettings:
            return TrainSettings(**{f.name: getattr(self, f.name)
                                    for f in dataclasses.fields(TrainSettings)})

        def to_config(self) -> Dict[str, Any]:
            return config_dict(name, self.env(), self.train())

        @classmethod
        def from_config(cls, cfg: Dict[str, Any]):
            env = env_cls.from_dict(cfg.get("env", {}))
            train = TrainSettings.from_dict({k: v for k, v in cfg.items() if k not in ("task", "env")})
            return cls(**env.to_dict(), **train.to_dict())

    RunSettings.__name__ = RunSettings.__qualname__ = env_cls.__name__.replace("Settings", "") + "Run"
    RunSettings.__doc__ = f"Every setting of ``gfnem train {name}``: {env_cls.__name__} and TrainSettings."
    return RunSettings


def settings_of(cfg: Dict[str, Any]):
    """(task module, env settings, train settings) of a run config dict (validated)."""
    mod = task_module(cfg.get("task", ""))
    s = mod.Settings.from_config(cfg)
    s.validate()
    return mod, s.env(), s.train()


def config_dict(task: str, env_s: Settings, train_s: Settings) -> Dict[str, Any]:
    return {"task": task, "env": env_s.to_dict(), **train_s.to_dict()}


def build(cfg: Dict[str, Any]):
    """(env, gfn, optim) from a run config."""
    mod, env_s, s = settings_of(cfg)
    env = mod.build_env(env_s)
    policy = MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=s.hidden, n_layers=s.n_layers,
                       uniform_pb=s.uniform_pb, shared_torso=s.shared_torso)
    if hasattr(mod, "policy"):  # a task's own policy around the MLP (e.g. dag's fixed flows)
        policy = mod.policy(env_s, env, policy)
    buckets = tuple((i + 1) / s.pack for i in range(s.pack)) if s.pack > 1 else None
    gfn = GFlowNet(env, policy, s.objective(), s.explore(), eval_buckets=buckets,
                   one_pass=s.one_pass, compact=s.compact)
    return env, gfn, s.optim()


def init_state(gfn: GFlowNet, optim: OptimConfig, key, replay: int = 0):
    """(LoopState at step 0, optimizer): policy parameters from fold_in(key, keys.PARAMS); the
    environment's reward parameters in the model slot. ``replay`` > 0: the optimizer also carries
    an empty replay buffer of that many trajectories (``gflownet.replay_memory``)."""
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    # jitted: one compilation instead of dozens of eager ones (about 45 MiB less peak memory)
    params = jax.jit(gfn.init)(keys.tagged(key, keys.PARAMS))
    tx = policy_optimizer(gfn, optim, params)
    if replay:
        env = gfn.env
        tx = loop.with_memory(tx, replay_memory(gfn, params, replay, env.log_reward,
                                                env.default_params()))
    st = loop.init_state(params, None, gfn.env.default_params(), None, key)
    return st._replace(sampler_opt=jax.jit(tx.init)(params)), tx


def make_step(gfn: GFlowNet, tx, batch_size: int, devices: int = 1, state_index=True,
              replay: int = 0):
    """The plain-training step: ``loop.make_step`` with the GFlowNet's sampler update only
    (``replay``: its replay buffer's capacity, as given to ``init_state``)."""
    env = gfn.env
    upd = sampler_update(gfn, tx, batch_size, env.log_reward,
                         state_index=env.state_index if state_index else None, replay=replay)
    return loop.make_step(upd, None, loop.Schedule("sampler"), mesh=loop.make_mesh(devices))


def make_evaluator(env, gfn, extra=None):
    """A jitted params -> ({l1, jsd}, p) against the exact target, plus the table it uses.

    ``extra``: None, or ``(p, target) -> {name: scalar}`` (both float[S] over every state) whose
    values join l1 and jsd (a task's ``exact_metrics``)."""
    table = jax.jit(lambda: metrics.transition_table(env))()  # jitted: less compile memory
    target = jax.jit(lambda t: metrics.target_distribution(env, env.log_reward, None, t))(table)

    @jax.jit
    def exact(params):
        p = metrics.terminal_distribution(env, gfn.policy, params, table)
        vals = {"l1": metrics.l1(p, target), "jsd": metrics.jsd(p, target)}
        return (vals if extra is None else {**vals, **extra(p, target)}), p

    return exact, table, target


def make_train(cfg: Dict[str, Any]):
    """``train(key) -> (state, metrics[steps], final_l1)``: a whole run as one function.

    Compiles the entire run (init, every step, the final exact L1) so that several seeds can run
    in one ``jax.vmap`` (``benchmarks/seeds_vmap.py``). Single device.
    """
    env, gfn, optim = build(cfg)
    # no packing: under vmap (several seeds) its lax.switch would run every bucket
    gfn = dataclasses.replace(gfn, eval_buckets=None, compact=False)
    s = TrainSettings.from_dict({k: v for k, v in cfg.items() if k not in ("task", "env")})
    _, tx = init_state(gfn, optim, jax.random.PRNGKey(0), s.replay)
    step = make_step(gfn, tx, s.batch_size, state_index=False, replay=s.replay)
    table = metrics.transition_table(env)
    target = metrics.target_distribution(env, env.log_reward, None, table)

    def final(st, data):
        return metrics.l1(metrics.terminal_distribution(env, gfn.policy, st.sampler, table), target)

    return loop.make_train(lambda k: init_state(gfn, optim, k, s.replay)[0], step, s.steps,
                           final_fn=final)


def experiment(settings) -> driver.Experiment:
    """The run of a task's settings (``task_settings``) for ``driver.run``: the one alternating
    loop with a sampler update only, the exact L1 / JSD to the target and the modes found so far
    logged every ``log_every`` steps (the visited states are saved with each checkpoint).

    A task module may also declare ``exact_metrics(env) -> (p, target) -> dict`` (more exact
    metrics in each row), ``write_inputs(env settings, out)`` (files beside config.json) and
    ``finish(env settings, env, p, out, primary) -> dict`` (the summary and files of the end,
    given the sampler's exact distribution p float[S])."""
    cfg = settings.to_config()
    mod = task_module(cfg["task"])
    s = settings.train()
    env, gfn, optim = build(cfg)
    state, tx = init_state(gfn, optim, s.seed, s.replay)
    extra = mod.exact_metrics(env) if hasattr(mod, "exact_metrics") else None
    exact, _, _ = make_evaluator(env, gfn, extra)
    mode_idx = np.asarray(mod.mode_indices(env))
    seen = np.zeros(env.num_states(), bool)
    step = make_step(gfn, tx, s.batch_size, s.devices, replay=s.replay)
    mesh = loop.make_mesh(s.devices)

    def make_chunk(n):
        compiled = loop.make_chunk(step, n)
        return lambda st, data: compiled(distributed.to_global(st, mesh))

    def restore_extras(ck):
        saved = checkpoint.load_extra(ck, "seen")
        if saved is not None:
            seen[:] = saved

    def summarize(m):
        seen[np.asarray(m["visited"]).reshape(-1)] = True
        row = {"modes_found": int(seen[mode_idx].sum()), "n_modes": int(len(mode_idx))}
        if "log_z" in m:
            row["log_z"] = float(np.asarray(m["log_z"])[-1])
        return row

    def evaluate(st):
        vals, _ = exact(st.sampler)
        return {k: float(v) for k, v in vals.items()}

    return driver.Experiment(
        name=f"{mod.NAME}/{s.loss}", settings=settings, config=cfg, state=state,
        make_chunk=make_chunk, summarize=summarize, evaluate=evaluate,
        extras=lambda: {"seen": seen}, restore_extras=restore_extras,
        write_inputs=(lambda out: mod.write_inputs(settings.env(), out)) if hasattr(mod, "write_inputs") else None,
        finish=((lambda st, rows, out, primary: mod.finish(settings.env(), env, np.asarray(exact(st.sampler)[1]),
                                                           out, primary))
                if hasattr(mod, "finish") else None),
        postfix=("loss", "l1", "log_z"))


def run(cfg: Dict[str, Any], out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Train as configured (a config dict, ``config_dict``), writing OUT/config.json,
    OUT/metrics.jsonl and checkpoints (``driver.run``)."""
    mod, _, _ = settings_of(cfg)
    return driver.run(experiment(mod.Settings.from_config(cfg)), out, progress, resume)


def load_run(run: str):
    """(cfg, env, gfn, params) of a finished run directory."""
    cfg = run_dir.load_config(run)
    if cfg.get("task") not in tasks():
        raise ValueError(f"run {run!r} is a {cfg.get('task', 'different')!r} run; sampling "
                         f"from it is not supported here")
    # the devices it trained on need not be here: sampling runs on one device
    env, gfn, optim = build(dict(cfg, devices=1))
    like, _ = init_state(gfn, optim, cfg["seed"], cfg.get("replay", 0))
    return cfg, env, gfn, driver.restore_run(run, like).sampler


def memory_estimate(settings):
    """``sizes.enumerable_task`` of a task's settings: its lower bound of a run's memory."""
    from gfnem_jax import sizes
    cfg = settings.to_config()
    return sizes.enumerable_task(task_module(cfg["task"]).build_env(settings.env()), settings)


def sample_row(cfg: Dict[str, Any]):
    """(row shape, dtype) of the samples of a task run with config ``cfg`` (``gfnem sample``)."""
    mod, env_s, _ = settings_of(cfg)
    env = mod.build_env(env_s)
    return tuple(jax.eval_shape(lambda: env.terminal_value(env.init())).shape), np.int64


def sample(run: str, n: int, seed: int, progress: bool = False, out=None) -> np.ndarray:
    """``gfnem sample``: the terminal values of n fresh on-policy samples of a run, int64[n, ...].

    ``out``: None (the array is returned, held in memory) or ``out(shape, dtype)`` returning an
    array to fill (e.g. ``numpy.lib.format.open_memmap``), called once before any sampling and
    written chunk by chunk (then returned): the same numbers, in memory of one chunk."""
    _, env, gfn, params = load_run(run)
    if out is None:
        return sample_terminals(env, gfn, params, n, seed, progress=progress).astype(np.int64)
    return sample_terminals(env, gfn, params, n, seed, progress=progress,
                            out=lambda shape, dtype: out(shape, np.int64))


def sample_terminals(env, gfn, params, n: int, seed: int, chunk: int = 8192,
                     progress: bool = False, out=None) -> np.ndarray:
    """terminal_value of n fresh on-policy samples, [n, ...]; independent of ``chunk``
    (``progress``: a progress bar over the chunks on stderr, with the time left). ``out``: None,
    or ``out(shape, dtype)`` giving the [n, ...] array to write each chunk into (returned)."""
    key = jax.random.PRNGKey(seed)

    @jax.jit
    def draw(offset):
        traj = gfn.sample(params, key, chunk, env.log_reward, index_offset=offset)
        return jax.vmap(env.terminal_value)(traj.terminal)

    from tqdm.auto import tqdm
    starts = range(0, n, chunk)
    bar = tqdm(starts, desc="sample", unit="chunk", disable=not progress or len(starts) < 2,
               file=sys.stderr)
    if out is None:
        return np.concatenate([np.asarray(draw(jnp.int32(i))) for i in bar])[:n]
    row = jax.eval_shape(draw, jnp.int32(0))
    dest = out((n,) + tuple(row.shape[1:]), row.dtype)
    for i in bar:
        x = np.asarray(draw(jnp.int32(i)))
        dest[i:i + chunk] = x[:min(chunk, n - i)]
    return dest
