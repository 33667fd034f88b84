"""Issue #2's convergence claim, checked against the exact target: 2D HyperGrid (H=8, r0=1e-3)."""
import pytest

from gfnem_jax.experiments import runner


# Long training (15-25 s per loss on 2 cores): with -m slow only, as benchmarks/hypergrid_convergence.py.
# CI keeps one such run: notebooks/quickstart.ipynb is exactly the tb case (same task, seed, batch
# and 500 steps) and asserts the same (exact L1 < 0.05, 4 modes); the losses themselves are checked
# exactly in test_losses_balance.py and test_divergences.py.
@pytest.mark.slow
@pytest.mark.parametrize("loss", ["tb", "db", "subtb"])
def test_2d_hypergrid_reaches_exact_l1_below_005(tmp_path, loss):
    # 500 updates of 64 trajectories (measured at step 500: L1 0.008 tb, 0.026 db, 0.010 subtb;
    # the claim was made at 1000 steps, where they are 0.005 / - / -)
    res = runner.run(dict(task="hypergrid", env=dict(ndim=2, height=8, r0=1e-3, r1=0.5, r2=2.0),
                          loss=loss, steps=500, batch_size=64, seed=0, log_every=500),
                     str(tmp_path / loss), progress=False)
    assert res["final"]["l1"] < 0.05
    assert res["final"]["modes_found"] == 4
