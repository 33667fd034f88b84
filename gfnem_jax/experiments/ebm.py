"""The energy-based run kind (``gfnem train ebm``): EB-GFN, PCD and GWG on {0,1}^d data.

An energy model p_phi(x) ∝ exp(-E_phi(x)) and its sampler (a GFlowNet, or persistent MCMC chains)
trained jointly; the bundle and the two sides of the step are ``gfnem_jax.ebgfn``. Data: a 2-D
density discretised to d = 2 bits (``gfnem_jax.data.toy2d``) or a .npy of {0,1} vectors.

A run (``driver.run(build(settings), out)``) writes config.json (the settings, "task": "ebm" and
"d"), metrics.jsonl (per logged chunk: gfn_loss, e_loss, accept for gfn-cd / gwg, log_z for
objectives with one, test_nll for d <= 20, the loop's loss / loss_last, wall_s), energies.npy
(float32[2^d], index = bits as binary, first bit most significant; d <= 20), test.npy
(uint8[n, d]), summary.json (test_nll exact for d <= 20, sampler_tv), heatmaps.png (2-D data) and
checkpoint/step_N (the ``loop.LoopState``; ``gfnem_jax.run_dir``'s checkpoint policy and exact
resume). With several processes (``gfnem_jax.distributed``) only process 0 writes the run files.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import distributed as D
from gfnem_jax import driver, ebgfn, loop, mcmc, objectives, run_dir, sizes
from gfnem_jax.config import retune, setting
from gfnem_jax.data import toy2d
from gfnem_jax.ebgfn import GFN_METHODS, METHODS
from gfnem_jax.experiments import Command
from gfnem_jax.groups import ObjectiveSettings
from gfnem_jax.models import energy
from gfnem_jax.sampling import Exploration

NAME = "ebm"
HELP = "an energy-based model on {0,1}^d and its sampler (EB-GFN, PCD, GWG)"


@dataclasses.dataclass(frozen=True)
class EBMSettings(ObjectiveSettings, run_dir.CheckpointSettings):
    """Every setting of ``gfnem train ebm``: the objective group (``gfnem_jax.groups``) and these."""

    data: str = setting("2spirals", f"a 2-D density ({', '.join(toy2d.NAMES)}) or a .npy of {{0,1}} vectors")
    bits: int = setting(8, "bits per coordinate for 2-D densities (d = 2 bits)", min=1, max=16)
    grid_range: float = setting(4.0, "2-D densities are quantised on [-R, R)^2 with this R; 0: the "
                                "EB-GFN paper's R for the density (its NLLs then compare directly; "
                                "an NLL on R is that on R' plus 2 log(R'/R))", min=0)
    n_train: int = setting(50000, "training points drawn from a 2-D density", min=1)
    n_test: int = setting(10000, "held-out points drawn from a 2-D density", min=1)
    test_fraction: float = setting(0.1, "held-out fraction of a .npy data set", gt=0, lt=1)
    method: str = setting("gfn-cd", "how negatives are drawn: gfn-cd (one back-and-forth MH step "
                          "from each data point, EB-GFN's method), gfn (the sampler's own samples, "
                          "taken after gfn_updates sampler updates; less stable than gfn-cd), "
                          "pcd or gwg",
                          choices=METHODS)
    loss: str = retune(ObjectiveSettings, "loss", "tb",
                       help="gfn / gfn-cd: the GFlowNet objective (balance objectives take the "
                            "backward trajectories from data; the others need back_ratio 0)")
    steps: int = setting(5000, "training steps", min=1)
    seed: int = setting(0, "random seed (data, initialisation, sampling)", min=0)
    batch_size: int = setting(128, "data points (and negatives) per step, global over all devices", min=2)
    lr: float = setting(1e-3, "Adam learning rate of the energy model", gt=0)
    lr_gfn: float = setting(1e-3, "Adam learning rate of the GFlowNet policy", gt=0)
    lr_logz: float = setting(0.1, "Adam learning rate of log Z (EB-GFN uses 1; it diverged here with method gfn)", gt=0)
    back_ratio: float = setting(0.5, "fraction of the sampler batch that are backward trajectories from data", min=0, max=1)
    k: int = setting(0, "gfn-cd: steps back in the back-and-forth MH move, capped at d; 0: d (the "
                     "whole trajectory, an independence proposal from P_F; closer to the model at "
                     "convergence than 4, at the same cost)", min=0)
    k_warmup: int = setting(0, "gfn-cd: if > 0, k grows linearly from 1 to d over this many steps", min=0)
    temperature: float = setting(1.0, "reward temperature T: R = exp(-E / T)", gt=0)
    energy_l2: float = setting(0.01, "weight alpha of the energy penalty alpha (mean E(data)^2 + mean E(neg)^2)", min=0)
    gfn_updates: int = setting(0, "gfn / gfn-cd: sampler updates (fresh batches) per energy update; "
                               f"0: 1, or {ebgfn.UNWEIGHTED_GFN_UPDATES} for gfn with neg_weights "
                               "none (with 1 its sampler lags the energy and the model can end "
                               "worse than uniform)",
                               min=0)
    neg_weights: str = setting("is", "gfn: weights of the sampler's negatives in the energy's "
                               "update: none (each 1/B) or is (self-normalised importance weights "
                               "exp(-E(x')) P_B(tau|x') / P_F(tau), correcting a lagging sampler)",
                               choices=("none", "is"))
    mcmc_steps: int = setting(20, "pcd / gwg: sampler steps per update on the persistent chains", min=1)
    energy_hidden: int = setting(256, "width of the energy MLP", min=1)
    energy_layers: int = setting(3, "hidden layers of the energy MLP", min=1)
    gfn_hidden: int = setting(256, "width of the GFlowNet MLP", min=1)
    gfn_layers: int = setting(2, "hidden layers of the GFlowNet MLP", min=1)
    n_eval_samples: int = setting(20000, "samples drawn for the heat maps (and at most this many for MMD)", min=2)
    log_every: int = setting(500, "steps between logged rows (exact test NLL for d <= 20)", min=1)
    devices: int = setting(1, "split each batch over this many devices (shard_map data parallelism)", min=1)

    def check(self):
        if self.back_ratio == 1.0 and self.method == "gfn":
            raise ValueError("back_ratio must be < 1 with method gfn (its negatives are the forward batch)")
        D.check_devices(self.devices, self.batch_size)
        if self.method not in GFN_METHODS:
            return
        b_f, b_b = self.sampler_sizes()
        if b_f % self.devices or b_b % self.devices:
            raise ValueError(f"batch_size {self.batch_size} with back_ratio {self.back_ratio} gives "
                             f"{b_f} forward and {b_b} backward trajectories; both must be divisible "
                             f"by devices {self.devices}")
        obj = self.objective()
        if not obj.balance and b_b > 0:
            allowed = ", ".join(n for n in sorted(objectives.OBJECTIVES)
                                if objectives.get(n).balance)
            raise ValueError(f"back_ratio must be 0 with loss {obj.name} (it trains on trajectories "
                             f"from P_F only; the balance objectives {allowed} also take "
                             f"backward trajectories from the training set), got {self.back_ratio}")
        obj.check_sampling(Exploration(), batch_size=self.batch_size)

    @classmethod
    def upgrade(cls, d):
        """A saved config from before ``neg_weights`` existed trained ``gfn`` with unweighted
        negatives: it reads as neg_weights "none" (so ``--resume`` with the new default "is"
        refuses it by name instead of changing the run's objective half way)."""
        d = super().upgrade(d)
        if d.get("method") == "gfn" and "neg_weights" not in d:
            d["neg_weights"] = "none"
        return d

    def sampler_updates(self) -> int:
        """Sampler updates per energy update: gfn_updates, or for 0 ``ebgfn.sampler_updates``'s."""
        return ebgfn.sampler_updates(self)

    def sampler_sizes(self):
        """(B_f forward, B_b backward) trajectories per sampler update (gfn, gfn-cd)."""
        b_b = int(round(self.back_ratio * self.batch_size))
        return self.batch_size - b_b, b_b



Settings = EBMSettings


def load_data(s: EBMSettings):
    """(train uint8[N, d], test uint8[n, d], is_2d). Keys of the data: seed s.seed."""
    if s.data.endswith(".npy"):
        x = toy2d.load_npy(s.data)
        tr, te = toy2d.split(x, s.test_fraction, np.random.default_rng([s.seed, 1]))
        return tr, te, False
    if s.data not in toy2d.NAMES:
        raise ValueError(f"data must be one of {', '.join(toy2d.NAMES)} or a path ending in .npy, got {s.data!r}")
    rng = np.random.default_rng([s.seed, 0])
    r = toy2d.resolve_range(s.grid_range, s.data)
    return (toy2d.make_data(s.data, s.bits, s.n_train, rng, r),
            toy2d.make_data(s.data, s.bits, s.n_test, rng, r), True)


def build(settings: EBMSettings) -> driver.Experiment:
    """The run: the data (``load_data``), the bundle (``ebgfn.make``), its compiled chunks over
    the training set, the exact test NLL per logged row (d <= 20) and the run's summary files."""
    from gfnem_jax.experiments import ebm_eval

    settings.validate()
    s = settings
    train, test, is_2d = load_data(s)
    d = train.shape[1]
    ebm = ebgfn.make(s, d)
    mesh = loop.make_mesh(s.devices)
    train_all = D.to_global(jnp.asarray(train, jnp.float32), mesh)
    exact = d <= energy.MAX_EXACT_D

    def make_chunk(n):
        compiled = ebgfn.make_chunk(ebm, n, mesh)
        return lambda st, data: compiled(D.to_global(st, mesh), data)

    def write_inputs(out):
        np.save(os.path.join(out, "test.npy"), test.astype(np.uint8))

    def finish(st, rows, out, primary):
        summary = ebm_eval.summarize(ebm, st.sampler, st.model, test,
                                     jax.random.fold_in(st.key, -2 & 0x7FFFFFFF),
                                     gfn_based=ebm.gfn_based, n_mmd=min(2000, s.n_eval_samples))
        summary["train_s"] = rows[-1].get("wall_s") if rows else 0.0
        if not primary:
            return summary
        if exact:
            np.save(os.path.join(out, "energies.npy"),
                    np.asarray(energy.all_energies(ebm.model, st.model), np.float32))
        if is_2d and d <= 20:
            ebm_eval.heatmaps(ebm, st.sampler, st.model, train, jax.random.fold_in(st.key, 3),
                              os.path.join(out, "heatmaps.png"), gfn_based=ebm.gfn_based,
                              n=s.n_eval_samples)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        return summary

    return driver.Experiment(
        name=f"ebm/{s.method}", settings=s, config={"task": "ebm", "d": d, **s.to_dict()},
        state=ebgfn.init_state(ebm, s.seed), make_chunk=make_chunk, data_fn=lambda c: train_all,
        summarize=ebgfn.summarize_chunk,
        evaluate=(lambda st: {"test_nll": float(energy.exact_nll(ebm.model, st.model, test))})
        if exact else None,
        write_inputs=write_inputs, finish=finish, resume_defaults=type(s).defaults(),
        postfix=("e_loss", "gfn_loss", "test_nll"), report=lambda res: res["summary"])


def run(settings: EBMSettings, out: str, progress: bool = True, resume: bool = False) -> dict:
    """Train and write the run files into ``out`` (module docstring); returns the summary."""
    return driver.run(build(settings), out, progress, resume)["summary"]


def owns(config: dict) -> bool:
    """Whether a saved config.json is an ebm run."""
    return config.get("task") == "ebm"


def settings_of(config: dict) -> EBMSettings:
    """The settings of a saved config.json (without its "task" and "d")."""
    return EBMSettings.from_dict({k: v for k, v in config.items() if k not in ("task", "d")})


def load_run(run: str):
    """(settings, bundle, state) of a finished ebm run folder (its config.json and checkpoint);
    the state is a ``loop.LoopState`` (sampler: GFlowNet parameters or chains, model: phi)."""
    cfg = run_dir.load_config(run)
    if not owns(cfg):
        raise ValueError(f"run {run!r} is a {cfg.get('task', 'different')!r} run, not an ebm run")
    settings = settings_of(cfg)  # the devices it trained on need not be here
    e = ebgfn.make(settings, cfg["d"])
    return settings, e, driver.restore_run(run, ebgfn.init_state(e, settings.seed))


SAMPLE_CHUNK = 4096  # samples drawn per compiled call (and written per chunk when streaming)


def sample(run: str, n: int, seed: int = 0, progress: bool = False, out=None) -> np.ndarray:
    """uint8[n, d]: n samples of a finished run's model: its GFlowNet for gfn / gfn-cd; exact
    samples of p_phi (enumeration) for pcd / gwg when d <= 20, else its persistent chains run
    on with Gibbs-with-gradients (1000 steps). Chunk i of SAMPLE_CHUNK samples uses
    ``fold_in(PRNGKey(seed), i * SAMPLE_CHUNK)``. ``out``: None (returned in memory) or
    ``out(shape, dtype)`` giving the array to fill chunk by chunk (``gfnem sample`` streams to a
    .npy this way): the same numbers."""
    from tqdm.auto import tqdm
    from gfnem_jax.experiments import ebm_eval

    settings, e, st = load_run(run)
    key = jax.random.PRNGKey(seed)
    dest = np.empty((n, e.d), np.uint8) if out is None else out((n, e.d), np.uint8)
    starts = range(0, n, SAMPLE_CHUNK)
    for i in tqdm(starts, desc="sample", unit="chunk", disable=not progress or len(starts) < 2):
        b, k = min(SAMPLE_CHUNK, n - i), jax.random.fold_in(key, i)
        if e.gfn_based:
            x = ebm_eval.sample_gfn(e, st.sampler, st.model, k, b)
        elif e.d <= energy.MAX_EXACT_D:
            x = ebm_eval.sample_exact(e.model, st.model, k, b)
        else:
            x0 = jnp.tile(st.sampler, (b // st.sampler.shape[0] + 1, 1))[:b]
            x = np.asarray(mcmc.gwg(e.model.energy, st.model, k, x0, 1000)[0], np.uint8)
        dest[i:i + b] = x
    return dest


def evaluate_run(run: str, seed: int = 0, ais_chains: int = 256, ais_temps: int = 1000) -> dict:
    """The held-out NLL (nats per point) of a finished run's energy model on its test.npy: exact
    (enumeration) for d <= 20, else annealed importance sampling with its standard error.
    Writes RUN/eval.json; returns {"test_nll", "exact", "log_z_se", "n_test", "d", "method"}."""
    from gfnem_jax.experiments import ebm_eval
    settings, e, st = load_run(run)
    path = os.path.join(run, "test.npy")
    try:
        test = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"run {run!r}: its test.npy cannot be read ({type(err).__name__})") from None
    if test.ndim != 2 or test.shape[1] != e.d:
        raise ValueError(f"run {run!r}: its test.npy has shape {list(test.shape)}, not [n, {e.d}]")
    x = jnp.asarray(test, jnp.float32)
    exact = e.d <= energy.MAX_EXACT_D
    if exact:
        nll, se = float(energy.exact_nll(e.model, st.model, x)), 0.0
    else:
        nll, se = ebm_eval.ais_nll(e.model, st.model, x, jax.random.PRNGKey(seed), ais_chains,
                                   ais_temps)
    res = {"test_nll": nll, "exact": exact, "log_z_se": se, "n_test": int(len(test)), "d": e.d,
           "method": settings.method}
    with open(os.path.join(run, "eval.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    return res


def _eval_args(parser) -> None:
    parser.add_argument("--run", required=True, help="an ebm run directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of AIS (d > 20; default 0)")


def _eval_main(args) -> None:
    print(json.dumps(evaluate_run(args.run, args.seed)))


EVAL = Command("ebm", "energy model: held-out NLL (exact for d <= 20, else AIS)", _eval_args,
               _eval_main, (EBMSettings,))


memory_estimate = sizes.ebm_memory  # the lower bound gfnem train checks before any work


def sample_row(config: dict):
    """(row shape, dtype) of ``gfnem sample`` on an ebm run: uint8 rows of its d variables."""
    return ((config["d"],), np.uint8) if isinstance(config.get("d"), int) else None
