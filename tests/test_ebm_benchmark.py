"""benchmarks/ebm.py's step-budget runs: an interrupted run continues from its checkpoint exactly
as if it had not stopped (the same parameters bitwise, the same held-out NLL curve)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import ebgfn
from gfnem_jax.data import toy2d
from gfnem_jax.experiments import ebm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import ebm as bench  # noqa: E402  (benchmarks/ebm.py)


def _flat(tree):
    return np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(tree)])


def test_step_budget_run_resumes_from_its_checkpoint_exactly(tmp_path, capsys):
    s = ebm.EBMSettings(method="gfn-cd", bits=2, energy_hidden=8, energy_layers=1, gfn_hidden=8,
                        gfn_layers=1, batch_size=8)
    e = ebgfn.make(s, 4)
    rc = ebgfn.make_chunk(e, 10)
    rng = np.random.default_rng(0)
    train = jnp.asarray(toy2d.make_data("moons", 2, 200, rng), jnp.float32)
    test = toy2d.make_data("moons", 2, 100, rng)
    st_a, a = bench.run_one(e, rc, train, test, 0, 0, 10, False, 40, 10)
    ck = str(tmp_path / "ck")
    bench.run_one(e, rc, train, test, 0, 0, 10, False, 20, 10, ckpt=ck)  # "stopped" at step 20
    capsys.readouterr()
    st_b, b = bench.run_one(e, rc, train, test, 0, 0, 10, False, 40, 10, ckpt=ck)
    out = capsys.readouterr().out
    assert "resumed at step 20" in out and "step 10/40" not in out  # it did not start over
    assert b["steps"] == a["steps"] == 40
    assert [r[:2] for r in b["curve"]] == [r[:2] for r in a["curve"]]
    assert _flat(st_a.model).tobytes() == _flat(st_b.model).tobytes()
    assert _flat(st_a.sampler).tobytes() == _flat(st_b.sampler).tobytes()
