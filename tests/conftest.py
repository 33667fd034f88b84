import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile far more than they run: LLVM at optimisation level 0 compiles XLA:CPU programs
# about 1.5-2x faster (the results are the same to float tolerance; reruns stay bitwise). The few
# tests whose cost is the run itself (long default CLI runs, some notebooks) ask for O2 back:
# see tests/_o2.py.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
# CLI runs in tests leave the user's cache (~/.cache/gfnem_jax) alone ...
os.environ.setdefault("GFNEM_NO_COMPILE_CACHE", "1")
# ... and share one persistent compilation cache of their own, per test run: many tests compile the
# same program more than once (a run, its rerun, its resume; in-process and in a subprocess).
# A maximum size turns on JAX's file locks, which make the cache safe between xdist workers.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"gfnem-test-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None)
settings.load_profile("ci")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def float64():
    """float64 inside one test: jax.enable_x64 is a context manager, not a global switch."""
    before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        yield
    assert jax.config.jax_enable_x64 == before

