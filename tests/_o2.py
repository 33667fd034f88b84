"""XLA's default optimisation (O2) for the few tests whose cost is the run itself
(tests/conftest.py sets ``--xla_backend_optimization_level=0`` for everything else):
``o2_env()`` for a subprocess or a notebook kernel, ``jit_o2`` for one program in this process
(``jax.jit``'s ``compiler_options`` override the process-wide flag for that program only)."""
import os

O0 = "--xla_backend_optimization_level=0"
O2_OPTIONS = {"xla_backend_optimization_level": 2}


def o2_env() -> dict:
    """os.environ without the test-wide optimisation level 0, for a subprocess or a kernel."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(O0, "").strip()
    return env


def jit_o2(fn, **kw):
    """``jax.jit(fn)`` compiled at O2; ``fn`` may itself be jitted (it is inlined)."""
    import jax
    return jax.jit(fn, compiler_options=O2_OPTIONS, **kw)
