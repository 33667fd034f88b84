"""XLA's default optimisation (O2) for the few test subprocesses whose cost is the run itself
(tests/conftest.py sets ``--xla_backend_optimization_level=0`` for everything else)."""
import os

O0 = "--xla_backend_optimization_level=0"


def o2_env() -> dict:
    """os.environ without the test-wide optimisation level 0, for a subprocess or a kernel."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(O0, "").strip()
    return env
