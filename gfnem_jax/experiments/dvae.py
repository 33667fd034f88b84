"""`gfnem train dvae`: a discrete VAE (G x G grid of K codes) trained by GFlowNet-EM, or a baseline.

Methods (one ``DVAESettings.method``):
  gflownet    GFlowNet-EM (Hu et al. 2023): the encoder q(z | x) is an autoregressive GFlowNet
              over the code grid (``models.dvae_encoder.DVAEEncoder``); the fixed schedule
              alternates ``e_steps`` E-steps (the objective ``loss``, TB by default, scaled by
              ``loss_scale`` = 1/16; sleep phase with probability ``sleep_prob``) and ``m_steps``
              M-steps (expected NLL -mean log p_theta(x, z), z ~ q(. | x)).
  greedy      the same, but the M-step uses the argmax code grid of q (sequential argmax).
  factorized  the same loop with q(z | x) = prod_i q(z_i | x) (logits blind to z_<i).
  vqvae       VQ-VAE with an EMA codebook (decay 0.999, commitment 0.25), same decoder.
The learned autoregressive prior (``prior`` = learned) is part of theta: trained by the M-step.
Every learning rate is multiplied by ``lr_drop`` after ``lr_drop_at`` of the run.

Data parallelism (``devices``, over every process of a ``gfnem_jax.distributed`` run): each step's
batch is split over a ``loop.make_mesh`` mesh; the E- and M-steps are ``loop.make_step`` on it
(global losses and gradients, per-sample keys by global index), the sleep phase draws the global
batch (x, z) ~ p_theta with the same key on every device and decodes only the device's rows, and
VQ-VAE averages its gradients over the devices and sums its EMA codebook statistics over them
(the codebook stays identical everywhere). 1 device is the single-device code, unchanged; N
devices give the same run to float tolerance. Only process 0 writes the run directory.

The pieces (data, model, updates, chunks) are in ``gfnem_jax.experiments.dvae_parts``; this
module declares the run kind: ``Settings``, ``build(settings) -> driver.Experiment``, ``owns``
and ``EVAL`` (``gfnem eval dvae``).

Run directory: config.json, metrics.jsonl (one row per chunk: step, loss, m_loss, test_bound =
-ELBO or the VQ bound on up to 256 held-out images, wall_s), checkpoint/step_N (the policy and the
resume of ``gfnem_jax.run_dir``), summary.json (with ``no_latent_bound``, the independent-pixel
model's NLL on the same images, and ``codes_used``: the test bound is at least 1 nat below it),
reconstructions.png, prior_samples.png;
``evaluate_run`` adds eval.json (IS test NLL).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import driver, run_dir, sizes
from gfnem_jax import distributed as D
from gfnem_jax.config import retune, setting
from gfnem_jax.experiments import Command
from gfnem_jax.experiments import dvae_eval as ev
from gfnem_jax.experiments.dvae_parts import Built, load_data, write_pngs
from gfnem_jax.groups import ExplorationSettings, ObjectiveSettings
from gfnem_jax.models.dvae import PRIORS

NAME = "dvae"
HELP = "discrete VAE (grid of K codes) with a GFlowNet encoder trained by GFlowNet-EM, or baselines"
METHODS = ("gflownet", "greedy", "factorized", "vqvae")
EVAL_SUBSET = 256


@dataclasses.dataclass(frozen=True)
class DVAESettings(ExplorationSettings, ObjectiveSettings, run_dir.CheckpointSettings):
    """Every setting of ``gfnem train dvae``: the objective and exploration groups
    (``gfnem_jax.groups``) with the dVAE's defaults, and these."""

    method: str = setting("gflownet", "gflownet (GFlowNet-EM), greedy (M-step on the argmax code "
                          "grid), factorized (independent codes given x) or vqvae", choices=METHODS)
    codes: int = setting(8, "number of codes K", min=2)
    data: str = setting("digits", "digits (embedded 8x8), shapes (generated 28x28, long-range structure), "
                        "wires (generated 28x28, exact entropy) or a path: MNIST IDX directory, .npz (x_train, x_test) or .npy of images")
    grid: int = setting(4, "the latent is a grid x grid array of codes", min=1)
    steps: int = setting(4000, "steps (E- and M-steps together)", min=1)
    batch_size: int = setting(128, "images per step", min=1)
    seed: int = setting(0, "seed of every key", min=0, max=2 ** 32 - 1)
    e_steps: int = setting(400, "E-steps per cycle", min=1)
    m_steps: int = setting(400, "M-steps per cycle", min=1)
    sleep_prob: float = setting(0.3, "probability of a sleep-phase update after an E-step", min=0, max=1)
    loss: str = retune(ObjectiveSettings, "loss", "tb", help="E-step objective")
    loss_scale: float = setting(1 / 16, "E-step gradient multiplier (the paper scales TB by 1/16)", gt=0)
    logz: str = setting("scalar", "log Z: a scalar (the paper) or a function of x", choices=("scalar", "conditional"))
    prior: str = setting("uniform", "prior over codes", choices=PRIORS)
    lr: float = setting(1e-3, "Adam learning rate of the encoder", gt=0)
    lr_logz: float = setting(0.1, "Adam learning rate of log Z", gt=0)
    lr_m: float = setting(1e-3, "Adam learning rate of the decoder, embeddings and prior (and VQ-VAE)", gt=0)
    lr_drop: float = setting(0.1, "multiply every learning rate by this after lr_drop_at of the run", gt=0, max=1)
    lr_drop_at: float = setting(0.75, "fraction of the run after which learning rates drop", min=0, max=1)
    temperature: float = retune(ExplorationSettings, "temperature", 1.0,
                                help="E-step exploration: softmax temperature")
    epsilon: float = retune(ExplorationSettings, "epsilon", 0.05,
                            help="E-step exploration: uniform mixing")
    channels: int = setting(32, "decoder / encoder CNN channels (the paper: 128)", min=1)
    embed_dim: int = setting(32, "code embedding size", min=1)
    hidden: int = setting(256, "encoder state-MLP width", min=1)
    n_test: int = setting(0, "held-out images used (0 = all)", min=0)
    log_every: int = setting(200, "steps per jitted chunk / metrics row", min=1)
    devices: int = setting(1, "split each batch over this many devices (of all processes)", min=1)
    plot: bool = setting(True, "write reconstructions.png and prior_samples.png")

    def check(self):
        if self.devices > 1:
            D.check_devices(self.devices, self.batch_size)
        if self.method != "vqvae":
            self.objective().check_sampling(self.explore())
        if self.method == "vqvae" and self.prior != "uniform":
            raise ValueError("prior must be uniform for method vqvae (its bound assumes it)")


def _settings(cfg) -> DVAESettings:
    s = cfg if isinstance(cfg, DVAESettings) else DVAESettings.from_dict(dict(cfg))
    s.validate()
    return s


Settings = DVAESettings


def owns(cfg: Dict[str, Any]) -> bool:
    """Whether a saved config.json is a dvae run."""
    return cfg.get("method") in METHODS and "codes" in cfg


def _summarize(m) -> Dict[str, float]:
    """A chunk's means of m_loss (over its M-steps), log_z and sleep (over its E-steps)."""
    r = {}
    for k in ("m_loss", "log_z", "sleep"):
        if k in m:
            v = np.asarray(m[k], np.float64)
            side = "m_step" if k == "m_loss" else "e_step"
            sel = np.asarray(m[side], bool) if side in m else slice(None)
            if np.size(v[sel]):
                r[k] = float(np.mean(v[sel]))
    return r


def build(settings, scan: bool = None) -> driver.Experiment:
    """The run (module docstring) for ``driver.run``. settings: ``DVAESettings`` or a dict of
    its fields; scan: one ``lax.scan`` per chunk (default: on accelerators; ``dvae_parts``)."""
    s = _settings(settings)
    train, test = load_data(s)
    b = Built(s, train.shape[1:], jnp.asarray(train[0]), scan=scan)
    x_train, x_sub = D.to_global(jnp.asarray(train), b.mesh), jnp.asarray(test[:EVAL_SUBSET])
    bound = jax.jit(lambda st, x, k: jnp.mean(b.test_bound(st, x, k)))
    ekey = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0x65766131)
    t0 = [time.perf_counter()]
    no_latent = float(np.mean(ev.independent_pixels_nll(train, test[:EVAL_SUBSET])))

    def make_chunk(n):
        t0[0] = time.perf_counter()
        return b.make_chunk(n, len(train))

    def finish(state, rows, out, primary):
        summary = {"method": s.method, "codes": s.codes, "grid": s.grid, "steps": s.steps,
                   "data": s.data, "n_train": int(len(train)), "n_test": int(len(test)),
                   "final": rows[-1] if rows else {},
                   "test_bound": rows[-1]["test_bound"] if rows else None,
                   "no_latent_bound": no_latent,
                   "train_wall_s": time.perf_counter() - t0[0]}
        tb = summary["test_bound"]
        summary["codes_used"] = bool(tb is not None and tb < no_latent - 1.0)
        if primary and tb is not None and not summary["codes_used"]:
            print(f"dvae: the test bound {tb:.2f} is not below the no-latent model's {no_latent:.2f} "
                  f"(independent pixels, same images): the decoder does not use its codes yet "
                  f"(docs/experiments/dvae.rst, '28x28 wires')", flush=True)
        if primary:  # only process 0 writes the run files
            with open(os.path.join(out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2, sort_keys=True)
            if s.plot:
                write_pngs(b, state, test, out, s.seed)
        return summary

    return driver.Experiment(
        name=f"dvae/{s.method}", settings=s, config=s.to_config(), state=b.state,
        make_chunk=make_chunk, data_fn=lambda c: x_train, summarize=_summarize,
        evaluate=lambda st: {"test_bound": float(bound(st, x_sub, ekey))},
        chunk=b.chunk_size, finish=finish, resume_defaults=DVAESettings.defaults(),
        postfix=("loss", "test_bound"))


def run(settings, out: str, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """``driver.run(build(settings), out, progress, resume)``: {"final": last metrics row,
    "summary": summary dict, "state": LoopState}."""
    return driver.run(build(settings), out, progress, resume)


def load_run(run: str):
    """(settings, Built, state, train, test) of a run directory with a checkpoint."""
    cfg = run_dir.load_config(run)
    if not owns(cfg):
        raise ValueError(f"run {run!r} is not a dvae run")
    s = _settings(dict(cfg, devices=1))  # the devices it trained on need not be here
    train, test = load_data(s)
    b = Built(s, train.shape[1:], jnp.asarray(train[0]))
    return s, b, driver.restore_run(run, b.state), train, test


def evaluate_run(run: str, is_samples: int = 5000, rows: int = 8192, seed: int = 0,
                 per_image: bool = False) -> Dict[str, Any]:
    """Test NLL of a run (IS with the encoder, or the VQ-VAE bound); writes run/eval.json.

    Returns {"nll" (nats per test image), "nll_sem", "is_samples", "n_images", "codes",
    "method", "bound" ("is" or "vq"), "grid", "bits_per_dim_lower", "eval_wall_s"}, and with
    ``per_image`` also "per_image_nll" (list of the n_images values, in test order; not written
    to eval.json): for paired comparisons of runs on the same images."""
    if is_samples < 1:
        raise ValueError(f"is_samples must be >= 1, got {is_samples}")
    s, b, state, _, test = load_run(run)
    t0 = time.perf_counter()
    if s.method == "vqvae":
        ll = -ev.vq_nll_bound(b.model, state.model, test)
        kind, S = "vq", 0
    else:
        ll = ev.is_log_likelihood(b.env, b.policy, state.sampler, b.model.log_joint, state.model,
                                  test, jax.random.PRNGKey(seed), is_samples, rows)
        kind, S = "is", is_samples
    res = {**ev.nats_summary(ll), "is_samples": S, "n_images": int(len(test)), "codes": s.codes,
           "method": s.method, "bound": kind, "grid": s.grid,
           "bits_per_dim_lower": None, "eval_wall_s": time.perf_counter() - t0}
    res["bits_per_dim_lower"] = res["nll"] / (math.log(2) * float(np.prod(test.shape[1:])))
    with open(os.path.join(run, "eval.json"), "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    if per_image:
        res["per_image_nll"] = [float(v) for v in -np.asarray(ll, np.float64)]
    return res


def add_eval_args(parser) -> None:
    """``gfnem eval dvae`` arguments."""
    parser.add_argument("--run", required=True, help="a dvae run directory")
    parser.add_argument("--is-samples", dest="is_samples", type=int, default=5000,
                        help="importance samples per test image (default 5000)")
    parser.add_argument("--rows", type=int, default=8192,
                        help="(image, sample) pairs per compiled call: the memory budget (default 8192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default 0)")


def eval_main(args) -> int:
    """``gfnem eval dvae``: prints one JSON line; writes RUN/eval.json."""
    print(json.dumps(evaluate_run(args.run, args.is_samples, rows=args.rows, seed=args.seed)))
    return 0


EVAL = Command("dvae", "discrete VAE: test NLL by importance sampling", add_eval_args, eval_main,
               (DVAESettings,))


memory_estimate = sizes.dvae_memory  # the lower bound gfnem train checks before any work
