import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile far more than they run: LLVM at optimisation level 0 compiles XLA:CPU programs
# about 1.5-2x faster (the results are the same to float tolerance; reruns stay bitwise). The few
# tests whose cost is the run itself (long default CLI runs, some notebooks) ask for O2 back:
# see tests/_o2.py. XLA:CPU's older loop emitters (--xla_cpu_use_fusion_emitters=false) compile
# another ~30% faster than the MLIR fusion emitters (measured: tests/test_parse_tree_env.py 40 s ->
# 29 s alone on 2 cores); a test-only setting, like the optimisation level: the library and the
# CLI keep XLA's defaults.
for _flag, _value in (("xla_backend_optimization_level", "0"), ("xla_cpu_use_fusion_emitters", "false")):
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_flag}={_value}").strip()
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


# The longest tests (measured on the 2-core CI machine, 15-66 s each) go first, longest first:
# pytest-xdist hands out its first batch round-robin, so they spread over the workers and the
# run ends on short tests instead of one worker finishing a long one while the other idles.
LONG_FIRST = (
    "test_dvae_devices.py::test_dvae_on_two_devices_agrees_with_one",
    "test_distributed.py::test_two_processes_of_two_devices_equal_one_process_of_four",
    "test_dvae_encoder.py::test_encoder_matches_posterior_one_image",
    "test_multidevice.py::test_four_devices_agree_with_one_for_every_objective",
    "test_multidevice.py::test_mixture_em_on_four_devices",
    "test_notebooks.py::test_notebook_runs_and_checks_its_numbers[grammar_gflownet_em",
    "test_notebooks.py::test_notebook_runs_and_checks_its_numbers[energy_based",
    "test_grammar_gfn.py::test_gflownet_learns_the_exact_posterior_of_one_sentence",
    "test_notebooks.py::test_notebook_runs_and_checks_its_numbers[discrete_vae",
    "test_em.py::test_e_step_alone_matches_exact_posterior",
    "test_ebm_loop.py::test_two_devices_agree_with_one",
    "test_grammar_gfn.py::test_packed_evaluation_setting_gives_the_same_training_step",
    "test_notebooks.py::test_notebook_runs_and_checks_its_numbers[mixture_em",
    "test_resume.py::test_grammar_kill9_then_resume_is_bitwise_identical",
    "test_resume.py::test_mixture_kill9_then_resume_is_bitwise_identical",
    "test_notebooks.py::test_notebook_runs_and_checks_its_numbers[quickstart",
    "test_docs.py::test_docs_build_without_warnings",
)


# Module-scoped fixtures that cost 10-40 s to build: their tests share one xdist worker
# (--dist loadgroup, setup.cfg), so the fixture is built once, not once per worker.
SHARED_FIXTURES = {("test_grammar_gfn.py", "trained"), ("test_cli.py", "two_runs"),
                   ("test_parse_tree_policy.py", "params"), ("test_parse_tree_rollout.py", "params")}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        for fixture in item.fixturenames:
            if (module, fixture) in SHARED_FIXTURES:
                item.add_marker(pytest.mark.xdist_group(f"{module}:{fixture}"))
                break

    def rank(item):
        for i, prefix in enumerate(LONG_FIRST):
            if prefix in item.nodeid:
                return i
        return len(LONG_FIRST)
    items.sort(key=rank)  # stable: the rest keep their order
