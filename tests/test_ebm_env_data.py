"""Bits environment invariants, the energy model's exact quantities, and the 2-D / .npy data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax import metrics
from gfnem_jax.data import toy2d
from gfnem_jax.envs.bits import Bits, BitsState, all_binary
from gfnem_jax.models import energy
from gfnem_jax.nets.policy import FunctionalPolicy, PolicyOutput
from gfnem_jax.sampling import forward_rollout


# -- environment -------------------------------------------------------------------------------------
def test_bits_step_backward_identity_and_masks():
    env = Bits(4)
    st = env.all_states()
    assert env.num_states() == 81 and st.bits.shape == (81, 4)
    idx = jax.vmap(env.state_index)(st)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(81))
    for s_i in range(81):
        s = BitsState(st.bits[s_i])
        fm, bm = np.asarray(env.forward_mask(s)), np.asarray(env.backward_mask(s))
        unset = np.asarray(s.bits) < 0
        np.testing.assert_array_equal(fm, np.repeat(unset, 2))
        np.testing.assert_array_equal(bm, ~unset)
        assert bool(env.is_terminal(s)) == (not unset.any())
        assert bool(env.is_initial(s)) == unset.all()
        for a in np.nonzero(fm)[0]:
            c = env.step(s, a)
            b = env.backward_action(s, a)
            np.testing.assert_array_equal(np.asarray(env.backward_step(c, b).bits), np.asarray(s.bits))
            assert int(env.forward_action(c, b)) == a
            assert bool(env.backward_mask(c)[b])
        for a in np.nonzero(~fm)[0]:  # illegal actions leave a valid state
            c = env.step(s, a)
            assert np.all(np.asarray(c.bits) >= -1) and np.all(np.asarray(c.bits) <= 1)


def test_bits_terminal_enumeration_and_trajectory_counts():
    env = Bits(3)
    term = env.all_terminals()
    np.testing.assert_array_equal(np.asarray(term.bits[5]), [1, 0, 1])
    np.testing.assert_array_equal(np.asarray(jax.vmap(env.terminal_index)(term)), np.arange(8))
    np.testing.assert_array_equal(np.asarray(energy.bits_to_index(term.bits)), np.arange(8))
    table = metrics.transition_table(env)
    counts = np.asarray(metrics.trajectory_counts(env, table))
    ti = np.asarray(env.terminal_state_indices())
    np.testing.assert_allclose(counts[ti], math.factorial(3))  # d! orders per terminal
    assert int(np.asarray(table.terminal).sum()) == 8
    with pytest.raises(ValueError, match="d <= 10"):
        Bits(11).all_states()
    with pytest.raises(ValueError, match="d must be"):
        Bits(0)


def test_every_trajectory_has_d_steps_and_reward():
    d = 5
    model = energy.EnergyModel(d, hidden=8, n_layers=1)
    env = Bits(d, energy=model, temperature=2.0)
    pol = FunctionalPolicy(lambda k, o, c: {}, lambda p, o, c: PolicyOutput(
        jnp.zeros(2 * d), jnp.zeros(d), jnp.zeros(())), lambda p, c: jnp.zeros(()))
    phi = model.init(jax.random.PRNGKey(0))
    tr = forward_rollout(env, pol, {}, jax.random.PRNGKey(1), 64, env.log_reward, phi)
    np.testing.assert_array_equal(np.asarray(tr.lengths), d)
    assert np.all(np.asarray(tr.terminal.bits) >= 0)
    x = np.asarray(tr.terminal.bits, np.float32)
    np.testing.assert_allclose(np.asarray(tr.log_reward),
                               -np.asarray(energy.energies(model, phi, x)) / 2.0, rtol=1e-5, atol=1e-6)
    # uniform policy: log P_F of a complete trajectory = -sum_t log(2 (d - t))
    np.testing.assert_allclose(np.asarray(tr.log_pf.sum(1)),
                               -sum(math.log(2 * (d - t)) for t in range(d)), rtol=1e-5)


# -- energy model --------------------------------------------------------------------------------------
def test_all_energies_chunks_and_exact_nll():
    model = energy.EnergyModel(7, hidden=16, n_layers=2)
    phi = model.init(jax.random.PRNGKey(2))
    X = all_binary(7)
    direct = np.asarray(energy.energies(model, phi, X))
    for c in (2, 5, 7, 14):
        np.testing.assert_allclose(np.asarray(energy.all_energies(model, phi, c)), direct, rtol=1e-5, atol=1e-6)
    lz = float(energy.log_partition(model, phi, 3))
    np.testing.assert_allclose(lz, np.logaddexp.reduce(-direct.astype(np.float64)), rtol=1e-5)
    x = X[jnp.array([0, 3, 3, 100])]
    np.testing.assert_allclose(float(energy.exact_nll(model, phi, x, 3)),
                               np.mean(direct[[0, 3, 3, 100]]) + lz, rtol=1e-5)
    lp = np.asarray(energy.log_probs(model, phi))
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-5)


def test_ml_gradient_with_exact_model_samples_equals_grad_nll(float64):
    d = 6
    model = energy.EnergyModel(d, hidden=16, n_layers=2)
    phi = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(3)))
    X = all_binary(d).astype(jnp.float64)
    data = X[jax.random.randint(jax.random.PRNGKey(4), (20,), 0, 2 ** d)]
    g_nll = jax.grad(lambda p: energy.exact_nll(model, p, data, 3))(phi)

    def ml_surrogate(p):  # E_data[E] - E_{p_phi}[E], the expectation exact (weights sg(p_phi))
        w = jax.lax.stop_gradient(jnp.exp(energy.log_probs(model, p)))
        return jnp.mean(energy.energies(model, p, data)) - jnp.sum(w * energy.energies(model, p, X))

    g_ml = jax.grad(ml_surrogate)(phi)
    for a, b in zip(jax.tree.leaves(g_nll), jax.tree.leaves(g_ml)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # cd_loss with negatives = every state, repeated in proportion to p (integer weights) is the same
    # estimator: check on a uniform-weight case (p_phi replaced by its own sample of all states)
    g_cd = jax.grad(lambda p: energy.cd_loss(model, p, data, X))(phi)
    g_ref = jax.grad(lambda p: jnp.mean(energy.energies(model, p, data)) - jnp.mean(energy.energies(model, p, X)))(phi)
    for a, b in zip(jax.tree.leaves(g_cd), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # and a wrong expectation (uniform instead of p_phi) gives a different gradient
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_nll), jax.tree.leaves(g_cd)))
    assert diff > 1e-4


# -- data -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_gray_code_round_trip(bits):
    m = 2 ** bits
    n = np.arange(min(m, 5000), dtype=np.int64) * max(1, m // 5000)
    np.testing.assert_array_equal(toy2d.from_gray(toy2d.to_gray(n)), n)
    g = toy2d.to_gray(np.arange(min(m, 4096), dtype=np.int64))
    assert np.all(np.bitwise_count(g[1:] ^ g[:-1]) == 1)  # neighbours differ in one bit
    pts = toy2d.sample_2d("moons", 1000, 0)
    x = toy2d.encode(pts, bits)
    assert x.shape == (1000, 2 * bits) and x.dtype == np.uint8
    c = toy2d.decode(x)
    np.testing.assert_array_equal(toy2d.encode(c, bits), x)
    inside = np.all(np.abs(pts) < toy2d.RANGE, 1)
    assert np.all(np.abs(c - pts)[inside] <= toy2d.RANGE / 2 ** bits + 1e-6)


def test_grid_range_paper_quantisation_and_nll_shift():
    """R: the cells of [-R, R)^2; the EB-GFN code's quantisation (sign bit, Gray-coded magnitude,
    int_scale 2^(b-1) / R_paper) is our encoding of the mirrored point on the same R with fixed
    bits flipped; and changing R moves the entropy of the discretised density by 2 log(R' / R)."""
    bits = 8
    r = toy2d.resolve_range(0, "2spirals")
    assert r == toy2d.PAPER_RANGE["2spirals"] and toy2d.resolve_range(4, "moons") == 4.0
    with pytest.raises(ValueError, match="half-width"):
        toy2d.resolve_range(-1.0, "moons")
    pts = toy2d.sample_2d("2spirals", 5000, 0).astype(np.float64)
    x = toy2d.encode(pts, bits, r)
    np.testing.assert_array_equal(toy2d.encode(toy2d.decode(x, r), bits, r), x)
    scale = 2 ** (bits - 1) / r

    def paper_bits(c):  # synthetic_utils.float2bin with get_binmap(.., "gray"), one coordinate
        m = np.floor(np.abs(c) * scale).astype(np.int64)
        return np.concatenate([(c < 0).astype(np.uint8)[:, None],
                               toy2d._int_bits(toy2d.to_gray(m), bits - 1)], 1)

    paper = np.concatenate([paper_bits(pts[:, 0]), paper_bits(pts[:, 1])], 1)
    mask = paper ^ toy2d.encode(-pts, bits, r)
    assert np.all(mask == mask[0]) and mask[0].sum() == 2
    h4 = toy2d.entropy_floor("8gaussians", bits, 1, n=1_000_000)
    hp = toy2d.entropy_floor("8gaussians", bits, 1, n=1_000_000, r=toy2d.PAPER_RANGE["8gaussians"])
    assert abs((h4 - hp) - 2 * math.log(toy2d.PAPER_RANGE["8gaussians"] / 4)) < 0.02


def test_samplers_seeded_and_named():
    for name in toy2d.NAMES:
        a, b = toy2d.sample_2d(name, 500, 7), toy2d.sample_2d(name, 500, 7)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (500, 2) and np.isfinite(a).all()
        assert np.mean(np.all(np.abs(a) < 4.5, 1)) > 0.99
        assert not np.array_equal(a, toy2d.sample_2d(name, 500, 8))
    with pytest.raises(ValueError, match="data must be one of"):
        toy2d.sample_2d("banana", 5, 0)


def test_entropy_floor_closed_form_on_uniform_cells():
    # checkerboard at 1 bit per coordinate: 4 cells; the points fill the 4 quadrants equally
    h = toy2d.entropy_floor("checkerboard", 1, 0, n=200_000)
    assert abs(h - math.log(4)) < 1e-3
    x = np.array([[0, 1], [0, 1], [1, 1], [1, 0]])
    assert abs(toy2d.empirical_entropy(x) - (-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))) < 1e-12


def test_npy_loader_errors(tmp_path):
    good = tmp_path / "g.npy"
    np.save(good, np.array([[0, 1, 1], [1, 0, 0]], np.int64))
    x = toy2d.load_npy(str(good))
    assert x.dtype == np.uint8 and x.shape == (2, 3)
    cases = {"bad.npy": np.array([[0, 2]]), "one.npy": np.array([0, 1]), "empty.npy": np.zeros((0, 3)),
             "wide.npy": np.zeros((2, 70))}
    msgs = {"bad.npy": "only 0 and 1", "one.npy": "2-D array", "empty.npy": "at least one",
            "wide.npy": "at most 64"}
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(ValueError, match=msgs[name]) as e:
            toy2d.load_npy(str(tmp_path / name))
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        toy2d.load_npy(str(tmp_path / "missing.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not an npy")
    with pytest.raises(ValueError, match="not a readable"):
        toy2d.load_npy(str(tmp_path / "junk.npy"))


def test_split_seeded_disjoint():
    x = toy2d.make_data("8gaussians", 4, 100, 0)
    tr, te = toy2d.split(x, 0.2, 1)
    assert tr.shape == (80, 8) and te.shape == (20, 8)
    tr2, te2 = toy2d.split(x, 0.2, 1)
    np.testing.assert_array_equal(te, te2)
    with pytest.raises(ValueError, match="test_fraction"):
        toy2d.split(x, 1.0, 0)
