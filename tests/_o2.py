"""XLA's default optimisation (O2) for the few tests whose cost is the run itself
(tests/conftest.py sets ``--xla_backend_optimization_level=0`` for everything else):
``o2_env()`` for a subprocess or a notebook kernel, ``jit_o2`` for one program in this process
(``jax.jit``'s ``compiler_options`` override the process-wide flag for that program only)."""
import os

O0 = "--xla_backend_optimization_level=0"
OLD_EMITTERS = "--xla_cpu_use_fusion_emitters=false"  # faster to compile, a little slower to run
O2_OPTIONS = {"xla_backend_optimization_level": 2}


def device_flags(devices: int) -> str:
    """XLA_FLAGS of a child process with ``devices`` CPU devices, compiling as the tests do."""
    return f"--xla_force_host_platform_device_count={devices} {O0} {OLD_EMITTERS}"


def with_device_flags(script: str, devices: int) -> str:
    """A child process's script with its ``XLA_FLAGS_HERE`` placeholder set to ``device_flags``."""
    return script.replace("XLA_FLAGS_HERE", repr(device_flags(devices)))


def o2_env() -> dict:
    """os.environ without the test-wide compile-speed flags (optimisation level 0, the older
    emitters): XLA's defaults, for a subprocess or a kernel."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    for f in (O0, OLD_EMITTERS):
        flags = flags.replace(f, "")
    env["XLA_FLAGS"] = " ".join(flags.split())
    return env


def jit_o2(fn, **kw):
    """``jax.jit(fn)`` compiled at O2; ``fn`` may itself be jitted (it is inlined)."""
    import jax
    return jax.jit(fn, compiler_options=O2_OPTIONS, **kw)
