"""Shared by the race workers (each runs in its own library's environment; stdlib only here).

Every worker takes the same flags, trains HyperGrid with its library, and writes one JSON file:

    lib, version, t_import_s, t_first_step_s   (seconds since RACE_T0, the launch time the
                                                  parent puts in the environment)
    steps, train_s, its                        steady state: steps after the first one and the
                                                  seconds they took (evaluation excluded)
    evals: [{step, t_s}]                       t_s = seconds since launch, evaluation excluded
    l1: [...] (ours only: exact L1 from our own DP)

Peers also write an .npz with their exact forward policy P_F(a | x) on every non-terminal grid
point at each evaluation (rows in row-major coordinate order, columns: +1 on coordinate i for
i < d, then stop); race.py pushes it through OUR dynamic programme to score them exactly.
"""
import argparse
import json
import os
import time

T0 = float(os.environ.get("RACE_T0", time.time()))


def now() -> float:
    return time.time() - T0


def parser(desc):
    p = argparse.ArgumentParser(description=desc)
    p.add_argument("--ndim", type=int, default=2)
    p.add_argument("--height", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=1e9, help="stop after this many seconds of training (first step excluded)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--r0", type=float, default=0.1)
    p.add_argument("--r1", type=float, default=0.5)
    p.add_argument("--r2", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-logz", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--n-hidden", type=int, default=2, help="hidden layers (Linear layers - 1)")
    p.add_argument("--shared", action="store_true", help="one torso for P_F and P_B")
    p.add_argument("--replay", type=int, default=0, help="replay buffer capacity (0 = on-policy)")
    p.add_argument("--loss", default="tb", help="tb (and db / subtb / logvar for torchgfn and "
                   "ours), or soft_q: gfnx's soft DQN baseline / our soft_q")
    p.add_argument("--tau", type=float, default=0.25, help="soft_q: Polyak rate of the target "
                   "network, every step (gfnx's soft DQN default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--out", required=True, help="JSON result path (tables go to OUT.npz)")
    return p


def ours_ready(args) -> float:
    """Our workers' start after their imports: JAX's persistent compilation cache in
    ``args.compile_cache`` when given (gfnem_jax.startup); returns the seconds since launch."""
    if args.compile_cache:
        from gfnem_jax.startup import enable_compilation_cache
        enable_compilation_cache(args.compile_cache)
    return now()


def write(path, d):
    with open(path, "w") as f:
        json.dump(d, f, indent=1)
