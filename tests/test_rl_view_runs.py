"""The RL view's objectives in every run kind (issue 31): the target network (tau < 1) in the
E-step of GFlowNet-EM (dvae) and the sampler of energy-based training (ebm), and a smoke test of
the CLI over the run kinds (each accepts soft_q / munchausen / pcl or refuses in one line)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import cli, ebgfn, loop
from gfnem_jax.experiments import dvae, ebm

TAU = 0.3


def _ebm_case(loss):
    s = ebm.EBMSettings(method="gfn", bits=2, n_train=200, n_test=20, energy_hidden=8,
                        gfn_hidden=8, batch_size=8, gfn_updates=1, loss=loss, tau=TAU)
    s.validate()
    e = ebgfn.make(s, 4)
    train = jnp.asarray(ebm.load_data(s)[0], jnp.float32)
    return ebgfn.init_state(e, 0), lambda n: ebgfn.make_chunk(e, n), train


def _dvae_case(loss, sleep):
    s = dvae.DVAESettings(codes=3, grid=2, steps=6, e_steps=3, m_steps=1, batch_size=8,
                          channels=4, embed_dim=4, hidden=16, n_test=6, loss=loss, tau=TAU,
                          sleep_prob=sleep)
    s.validate()
    train, _ = dvae.load_data(s)
    x = jnp.asarray(train)
    b = dvae.Built(s, train.shape[1:], x[0], scan=False)
    return b.state, lambda n: b.make_chunk(n, len(train)), x


CASES = {"ebm-soft_q": lambda: _ebm_case("soft_q"),
         "dvae-munchausen": lambda: _dvae_case("munchausen", 0.0)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_target_network_is_the_polyak_copy_in_dvae_and_ebm(case):
    """One sampler update (ebm: gfn_updates 1; dvae: an E-step, no sleep): the optimizer state
    keeps target_1 = (1 - tau) params_0 + tau params_1, params having moved; a few more steps
    stay finite and are deterministic (two runs from the same state agree exactly)."""
    st0, make, data = CASES[case]()
    assert isinstance(st0.sampler_opt, loop.Carried)
    for a, b in zip(jax.tree.leaves(st0.sampler_opt.target), jax.tree.leaves(st0.sampler)):
        np.testing.assert_array_equal(a, b)
    one = make(1)
    st1, m = one(st0, data)
    assert np.isfinite(np.asarray(m["loss"])).all()
    moved = 0.0
    for t, p0, p1 in zip(jax.tree.leaves(st1.sampler_opt.target), jax.tree.leaves(st0.sampler),
                         jax.tree.leaves(st1.sampler)):
        np.testing.assert_allclose(t, (1 - TAU) * np.asarray(p0) + TAU * np.asarray(p1),
                                   rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(np.asarray(p1) - np.asarray(p0)).max()))
    assert moved > 0
    runs = []
    for _ in range(2):
        st = st1
        for _ in range(2):
            st, m = one(st, data)
            assert np.isfinite(np.asarray(m["loss"])).all()
        runs.append(st)
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dvae_sleep_updates_move_the_target_too():
    """With the sleep phase on, training with a target network runs and keeps the copy between
    the parameters it has seen (finite, not equal to the online parameters)."""
    st, make, data = _dvae_case("soft_q", 1.0)
    one = make(1)
    for _ in range(2):
        st, m = one(st, data)
        assert np.isfinite(np.asarray(m["loss"])).all() and bool(np.asarray(m["sleep"]).all())
    diff = [float(np.abs(np.asarray(t) - np.asarray(p)).max())
            for t, p in zip(jax.tree.leaves(st.sampler_opt.target), jax.tree.leaves(st.sampler))]
    assert max(diff) > 0 and all(np.isfinite(diff))


# hypergrid, sets and sequences share dag's runner: sets is trained through the CLI with each loss
# in test_rl_view.py, hypergrid and sequences through the runner's step there
TINY = {
    "dag": ["dag", "--hidden", "8"],
    "ebm": ["ebm", "--method", "gfn", "--bits", "2", "--n-train", "64", "--n-test", "16",
            "--n-eval-samples", "16", "--gfn-hidden", "8", "--energy-hidden", "8",
            "--gfn-updates", "1"],
    "dvae": ["dvae", "--codes", "3", "--grid", "2", "--e-steps", "1", "--m-steps", "1",
             "--channels", "4", "--embed-dim", "4", "--hidden", "8", "--n-test", "4",
             "--no-plot"],
    "grammar": ["grammar", "--method", "gflownet", "--policy-layers", "1", "--policy-dim", "16",
                "--policy-heads", "2", "--policy-enc-layers", "1", "--nt", "2", "--pt", "3",
                "--dim", "8", "--max-len", "4", "--synth-train", "8", "--synth-valid", "4",
                "--synth-nt", "2", "--synth-pt", "3", "--synth-vocab", "6", "--threshold-start",
                "100", "--eval-samples", "2", "--bracket-len", "2", "--enum-states", "0"],
}
LOSS_OF = {"dag": "soft_q", "ebm": "pcl", "dvae": "soft_q", "grammar": "munchausen"}


@pytest.mark.parametrize("kind", sorted(TINY))
def test_cli_run_kinds_take_the_rl_losses(tmp_path, kind):
    """``gfnem train KIND --loss L`` (tau 0.5 for the target-network losses), 2 steps: the rows
    are logged with a finite loss and config.json records the loss and its settings (sets:
    ``test_rl_view.py::test_cli_trains_the_rl_objectives``)."""
    loss = LOSS_OF[kind]
    run = tmp_path / "r"
    extra = ["--tau", "0.5"] if loss != "pcl" else ["--rl-correction", "none"]
    cli.main(["train"] + TINY[kind] + ["--loss", loss, "--steps", "2", "--log-every", "1",
                                       "--batch-size", "4", "--quiet", "--out", str(run)] + extra)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    key = "gfn_loss" if kind == "ebm" else "loss"
    losses = [r[key] for r in rows if r.get(key) is not None]  # dvae: E-step rows only
    assert rows[-1]["step"] == 2 and losses and np.isfinite(losses).all(), rows
    cfg = json.load(open(run / "config.json"))
    assert cfg["loss"] == loss and cfg["rl_correction"] in ("pb", "none")


def test_cli_mixture_refuses_the_rl_losses_in_one_line(tmp_path, capsys):
    """The mixture run kind trains tb / subtb only (conditional log Z(x), as the paper's)."""
    with pytest.raises(SystemExit):
        cli.main(["train", "mixture", "--loss", "soft_q", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "soft_q" in err and "tb" in err, err
