"""Several processes, one mesh: JAX's own multi-process runtime (``jax.distributed``).

Every ``gfnem train`` run kind runs unchanged over the devices of several processes (hosts, or
processes on one machine): each process runs the same program; ``jax.distributed.initialize``
joins them; ``loop.make_mesh`` then spans every device of every process, and the one alternating
step (``loop.make_step``, a ``jax.shard_map`` over the mesh) has each device compute its own shard
of the batch (its rollouts, keyed by global sample index) and take every statistic over the
global batch with collectives. Nothing here is a scheduler: the processes are started by the
user (or a cluster manager) with

    gfnem train ... --num-processes P --process-id I --coordinator HOST:PORT

or the environment variables JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_COORDINATOR_ADDRESS.
On CPU the processes talk through gloo over TCP (loopback on one machine).

State and data are *replicated* over the mesh (every process holds the same values); the step's
outputs are replicated too. ``to_global`` turns host values into global arrays before a compiled
chunk; ``to_local`` reads this process's replica back (metrics, evaluation, run files). Only the
primary process (index 0) writes metrics and run files; every process takes part in a checkpoint.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import jax
import numpy as np

ENV = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS")


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {v!r}") from None


def initialize(num_processes: Optional[int] = None, process_id: Optional[int] = None,
               coordinator: Optional[str] = None, timeout_s: int = 120) -> bool:
    """Join the processes of a run (before any JAX computation). Returns True when it did.

    Unset arguments are read from JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_COORDINATOR_ADDRESS;
    with one process (or none given) nothing happens. Raises ValueError naming the setting."""
    n = num_processes if num_processes is not None else _env_int(ENV[0])
    pid = process_id if process_id is not None else _env_int(ENV[1])
    addr = coordinator if coordinator is not None else os.environ.get(ENV[2])
    if n is None or n == 1:
        if pid not in (None, 0):
            raise ValueError(f"process_id {pid} needs num_processes > {pid}")
        return False
    if n < 1:
        raise ValueError(f"num_processes must be >= 1, got {n}")
    if pid is None or not 0 <= pid < n:
        raise ValueError(f"process_id must be in 0..{n - 1} (num_processes {n}), got {pid}")
    if not addr or not re.fullmatch(r"[^:\s]+:\d{1,5}", addr):
        raise ValueError(f"coordinator must be HOST:PORT (the address of process 0), got {addr!r}")
    if jax.distributed.is_initialized():  # already joined (a second call in one process)
        return True
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older/newer JAX without the option: its default applies
        pass
    jax.distributed.initialize(addr, n, pid, initialization_timeout=timeout_s)
    return True


def process_count() -> int:
    return jax.process_count()


def process_index() -> int:
    return jax.process_index()


def is_primary() -> bool:
    """True in the process that writes metrics and run files (index 0)."""
    return jax.process_index() == 0


def to_global(tree, mesh):
    """Host values (identical in every process) as global arrays replicated over ``mesh``;
    unchanged with one process or no mesh."""
    if mesh is None or jax.process_count() == 1:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec as P
    rep = NamedSharding(mesh, P())

    def one(x):
        if x is None:
            return None
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        return jax.make_array_from_process_local_data(rep, np.asarray(x))

    return jax.tree.map(one, tree)


def to_local(tree):
    """This process's replica of replicated global arrays (numpy-convertible); unchanged with one
    process."""
    if jax.process_count() == 1:
        return tree

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree.map(one, tree)


def check_devices(devices: int, batch_size: Optional[int] = None) -> None:
    """Raise ValueError (naming the settings) unless ``devices`` devices are visible to JAX (all
    processes together) and, when given, ``batch_size`` splits evenly over them."""
    n = jax.device_count()
    if devices > n:
        raise ValueError(f"devices {devices} is more than the {n} that JAX sees (on CPU, set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={devices})")
    if batch_size is not None and batch_size % devices:
        raise ValueError(f"batch_size {batch_size} must be divisible by devices {devices}")
