"""docs/adding.rst, executed: its environment is exact, and its run kind trains and samples
through the CLI after one registry line."""
from __future__ import annotations

import json
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "adding.rst")


def _block(name: str) -> str:
    text = open(DOC).read()
    m = re.search(r"\.\. code-block:: python\n   :name: " + name + r"\n\n((?:   .*\n|\n)+)", text)
    assert m, f"no code block {name} in docs/adding.rst"
    return "\n".join(line[3:] for line in m.group(1).splitlines())


@pytest.fixture(scope="module")
def bits_kind():
    """The page's task module, importable as gfnem_jax.experiments.bits and registered."""
    from gfnem_jax import experiments
    mod = types.ModuleType("gfnem_jax.experiments.bits")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up while the code runs
    exec(compile(_block("adding-env") + "\n" + _block("adding-kind"), DOC, "exec"), mod.__dict__)
    experiments.KINDS["bits"] = mod.__name__
    yield mod
    del experiments.KINDS["bits"]
    del sys.modules[mod.__name__]


def test_environment_is_exact(bits_kind):
    """Enumeration is a bijection, parents undo children, and R/Z is the product of independent
    bits with P(1) = e^beta / (1 + e^beta)."""
    from gfnem_jax import metrics
    env = bits_kind.Bits(3, 0.7)
    states = env.all_states()
    idx = jax.vmap(env.state_index)(states)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(env.num_states()))
    table = metrics.transition_table(env)
    target = np.asarray(metrics.target_distribution(env, env.log_reward, None, table))
    ti = np.asarray(env.terminal_indices())
    bits = np.asarray(states.bits)[ti]
    p1 = np.exp(0.7) / (1 + np.exp(0.7))
    exact = np.prod(np.where(bits == 1, p1, 1 - p1), axis=1)
    np.testing.assert_allclose(target[ti], exact, rtol=1e-5, atol=1e-7)
    for a in (0, 1):
        child = jax.vmap(lambda s: env.step(s, a))(states)
        back = jax.vmap(lambda s: env.backward_step(s, jnp.int32(0)))(child)
        live = ~np.asarray(jax.vmap(env.is_terminal)(states))
        np.testing.assert_array_equal(np.asarray(back.bits)[live], np.asarray(states.bits)[live])


def test_run_kind_trains_and_samples_from_the_cli(bits_kind, tmp_path, capsys):
    from gfnem_jax import cli
    out = str(tmp_path / "run")
    cli.main(["train", "bits", "--n", "3", "--beta", "0.7", "--steps", "300", "--batch-size",
              "16", "--hidden", "32", "--log-every", "100", "--lr", "1e-3", "--out", out,
              "--quiet"])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 300 and final["l1"] < 0.15, final
    cli.main(["sample", "--run", out, "--n", "4000", "--seed", "2", "--out",
              str(tmp_path / "x.npy")])
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (4000, 3) and set(np.unique(x)) <= {0, 1}
    p1 = np.exp(0.7) / (1 + np.exp(0.7))
    assert abs(x.mean() - p1) < 0.08  # the sampler's L1 to R/Z is < 0.15
