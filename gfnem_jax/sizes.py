"""Memory and disk a run or a sample needs, estimated from its settings before any work.

Every estimate here is a *lower bound*: arrays the computation cannot avoid holding at once
(float32 / int32, 4 bytes a number), never XLA's temporaries, the interpreter (~200 MiB) or
compilation. A setting is refused only when even that lower bound exceeds what is there: the
memory available now (``/proc/meminfo`` MemAvailable, or ``os.sysconf``; on an accelerator, its
memory) or, for a sample, the free disk space of the output's folder. So a refusal means the
setting clearly cannot fit, and a setting that passes may still need more than its estimate.

The terms, per run kind (B: batch_size, T: the longest trajectory, 4 bytes a number):

  hypergrid, sets, sequences   B x (T+1) x the numbers of a state (the batch's trajectories)
                               + B x T/pack x hidden x n_layers (the policy's activations, kept
                               for the gradient) + num_states x (2 n_actions + 2 hidden) (the
                               exact metrics: the transition table, the policy over every state)
  ebm                          B x d x gfn_hidden x gfn_layers (trajectories of d steps)
                               + n_eval_samples x d + n_train x d (samples, data set)
                               + 2^d x (d + energy_hidden) (exact enumeration, d <= 20)
  grammar                      B x 3 x nt (the inside chart of the shortest sentence, 2 words)
                               for marginal; for gflownet B x samples x policy_layers x
                               policy_dim (one state of each tree)
  dvae                         B x grid^2 x hidden (a code per step, grid^2 steps)
  mixture                      B x hidden x n_layers

A run kind may declare ``memory_estimate(settings) -> (setting, bytes, detail)`` (the setting to
name, the lower bound, how it was counted); it replaces the term above. Sizes that are only known
after loading (a corpus, a data file) are for the library to check with ``check_memory`` when it
has them.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, Tuple

F32 = 4  # bytes of a float32 / int32

Estimate = Tuple[str, int, str]  # (setting to name, bytes, how they were counted)


def human(nbytes: float) -> str:
    """``1.5 GB``-style size (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(nbytes) < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} PB"


def host_memory() -> int:
    """Bytes of memory available now: MemAvailable of /proc/meminfo, else free pages x page size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: refuse nothing


def available_memory(devices: int = 1) -> int:
    """Memory a run can use: the host's (``host_memory``) on the CPU; on an accelerator, the
    ``bytes_limit`` of ``devices`` of them (the batch is split over them)."""
    try:
        import jax
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if stats.get("bytes_limit"):
                return int(stats["bytes_limit"]) * max(1, min(devices, jax.device_count()))
    except Exception:  # noqa: BLE001  (no backend: the host's memory)
        pass
    return host_memory()


def free_disk(path: str) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing folder)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return shutil.disk_usage(p).free


def check_memory(est: Optional[Estimate], available: Optional[int] = None,
                 what: str = "memory") -> None:
    """ValueError naming the setting when the lower bound ``est`` exceeds ``available`` bytes
    (default: ``available_memory()``)."""
    if est is None:
        return
    setting, need, detail = est
    avail = available_memory() if available is None else available
    if need > avail:
        raise ValueError(f"{setting}: needs at least {human(need)} of {what} ({detail}), more than "
                         f"the {human(avail)} available; use a smaller {setting.split()[0]}")


# -- estimates of runs -------------------------------------------------------------------------

def _largest(terms) -> Estimate:
    """(setting of the largest term, the sum, every term spelled out)."""
    terms = [t for t in terms if t[1] > 0]
    setting = max(terms, key=lambda t: t[1])[0]
    return setting, sum(t[1] for t in terms), " + ".join(f"{t[2]} = {human(t[1])}" for t in terms)


def enumerable_task(env, s) -> Estimate:
    """Lower bound of a hypergrid / sets / sequences run (``s``: its settings, ``env``: built)."""
    import jax
    import numpy as np
    B, T, P = s.batch_size, env.max_steps, max(1, getattr(s, "pack", 1))
    N, A = env.num_states(), env.n_actions
    V = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jax.eval_shape(env.init)))
    R = -(-T // P)  # with pack P, the loss pass may hold only 1/P of the padded states
    env_settings = ", ".join(f"{k} {v}" for k, v in s.env().to_dict().items()
                             if isinstance(v, int) and not isinstance(v, bool))
    return _largest([
        (f"batch_size {B}", B * (T + 1) * V * F32,
         f"{B} trajectories x {T + 1} states x {V} numbers x 4 B"),
        (f"batch_size {B}", B * R * s.hidden * s.n_layers * F32,
         f"{B} x {R} transitions x {s.hidden} units x {s.n_layers} layers x 4 B"),
        (env_settings or "the task", N * (2 * A + 2 * s.hidden) * F32,
         f"exact metrics: {N} states x (2 x {A} actions + 2 x {s.hidden} units) x 4 B"),
    ])


def ebm_memory(s) -> Optional[Estimate]:
    from gfnem_jax.models.energy import MAX_EXACT_D
    if s.data.endswith(".npy"):  # d is known once the file is read
        return None
    d = 2 * s.bits
    terms = [
        (f"batch_size {s.batch_size}", s.batch_size * d * s.gfn_hidden * s.gfn_layers * F32,
         f"{s.batch_size} x {d} transitions x {s.gfn_hidden} units x {s.gfn_layers} layers x 4 B"),
        (f"n_eval_samples {s.n_eval_samples}", s.n_eval_samples * d * F32,
         f"{s.n_eval_samples} draws x {d} variables x 4 B"),
        (f"n_train {s.n_train}", s.n_train * d * F32, f"{s.n_train} points x {d} variables x 4 B"),
    ]
    if d <= MAX_EXACT_D:
        terms.append((f"bits {s.bits}", (1 << d) * (d + s.energy_hidden) * F32,
                      f"2^{d} states x ({d} variables + {s.energy_hidden} units) x 4 B"))
    return _largest(terms)


def grammar_memory(s) -> Estimate:
    """Sentence lengths are known only once the corpus is read: counted as 2 words (the shortest
    kept), so this bound refuses only a batch that cannot fit even then."""
    B = s.batch_size
    if s.method == "gflownet":
        k = getattr(s, "samples", 1)
        return (f"batch_size {B}", B * k * s.policy_layers * s.policy_dim * F32,
                f"{B} sentences x {k} trees x {s.policy_layers} layers x {s.policy_dim} units "
                f"x 4 B")
    return (f"batch_size {B}", B * 3 * s.nt * F32,
            f"inside chart: {B} sentences x 3 spans x {s.nt} nonterminals x 4 B")


def dvae_memory(s) -> Estimate:
    B, G = s.batch_size, s.grid
    return (f"batch_size {B}", B * G * G * s.hidden * F32,
            f"{B} x {G * G} transitions x {s.hidden} units x 4 B")


def mixture_memory(s) -> Estimate:
    B = s.batch_size
    return (f"batch_size {B}", B * s.hidden * s.n_layers * F32,
            f"{B} x {s.hidden} units x {s.n_layers} layers x 4 B")


def train_estimate(mod, s) -> Optional[Estimate]:
    """The lower bound of a ``gfnem train KIND`` run with settings ``s`` (module docstring): the
    run kind's declared ``memory_estimate(settings)``, or None where the kind declares none (or
    nothing is known before loading its data)."""
    fn = getattr(mod, "memory_estimate", None)
    try:
        return fn(s) if fn is not None else None
    except AttributeError:  # settings that lack what the estimate reads: no estimate, no crash
        return None


def check_train(mod, s, available: Optional[int] = None) -> None:
    """ValueError naming the setting when a run clearly cannot fit in memory."""
    check_memory(train_estimate(mod, s),
                 available_memory(getattr(s, "devices", 1)) if available is None else available)


# -- estimates of samples ----------------------------------------------------------------------

def sample_bytes(n: int, row_shape, dtype) -> int:
    """Bytes of an .npy of n rows of ``row_shape`` and ``dtype`` (without its small header)."""
    import numpy as np
    return int(n) * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def check_sample_disk(n: int, row_shape, dtype, out: str, free: Optional[int] = None) -> None:
    """ValueError when the .npy of n samples cannot fit in the free space of ``out``'s folder."""
    need = sample_bytes(n, row_shape, dtype) + 4096
    free = free_disk(os.path.dirname(os.path.abspath(out))) if free is None else free
    if need > free:
        rows = "x".join(map(str, row_shape)) or "1"
        raise ValueError(f"n {n}: the output needs {human(need)} of disk ({n} samples x {rows} x "
                         f"{__import__('numpy').dtype(dtype).itemsize} B), more than the "
                         f"{human(free)} free in {os.path.dirname(os.path.abspath(out))!r}; use a "
                         f"smaller n")


def sample_row(mod, cfg: dict):
    """(row shape, dtype) of ``gfnem sample`` on a run of kind ``mod`` with config ``cfg``: the
    kind's declared ``sample_row(config)``, or None."""
    fn = getattr(mod, "sample_row", None)
    return fn(cfg) if fn is not None else None
