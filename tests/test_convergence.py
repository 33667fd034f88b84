"""Issue #2's convergence claim, checked against the exact target: 2D HyperGrid (H=8, r0=1e-3)."""
import pytest

from gfnem_jax.experiments import runner


# tb's run is exactly notebooks/quickstart.ipynb's (same task, seed, batch and 500 steps), whose
# asserts (exact L1 < 0.05, 4 modes) CI checks with the notebooks; here it runs with -m slow only
@pytest.mark.parametrize("loss", [pytest.param("tb", marks=pytest.mark.slow), "db", "subtb"])
def test_2d_hypergrid_reaches_exact_l1_below_005(tmp_path, loss):
    # 500 updates of 64 trajectories (measured at step 500: L1 0.008 tb, 0.026 db, 0.010 subtb;
    # the claim was made at 1000 steps, where they are 0.005 / - / -)
    res = runner.run(dict(task="hypergrid", env=dict(ndim=2, height=8, r0=1e-3, r1=0.5, r2=2.0),
                          loss=loss, steps=500, batch_size=64, seed=0, log_every=500),
                     str(tmp_path / loss), progress=False)
    assert res["final"]["l1"] < 0.05
    assert res["final"]["modes_found"] == 4
