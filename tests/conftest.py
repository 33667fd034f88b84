import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CLI runs in tests compile afresh (no persistent cache shared between parallel workers)
os.environ.setdefault("GFNEM_NO_COMPILE_CACHE", "1")

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
