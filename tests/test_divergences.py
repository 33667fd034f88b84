"""Exact tests of the divergence estimators on a tiny, fully enumerated DAG.

Expectations of the estimators are computed exactly, in float64, by enumerating every
ordered batch of i.i.d. trajectories (all N^B tuples, N = 6) with its probability, and
compared with the gradients of the exact divergences (see tests/_tiny_enum.py).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnem_jax.losses import control_variates as cv
from gfnem_jax.losses import divergences as D

try:  # tests/ as a plain directory (pytest's default "prepend" import mode) or a package
    import _tiny_enum as T
except ImportError:  # pragma: no cover
    from tests import _tiny_enum as T


pytestmark = pytest.mark.usefixtures("float64")


# --- helpers -------------------------------------------------------------------------------


class Batch(NamedTuple):
    pf: jax.Array  # log P_F of the sampled trajectories
    pb: jax.Array  # log P_B
    r: jax.Array  # log R
    pi: jax.Array  # log-probability under the behaviour policy (THETA_BEHAVIOUR)


def params():
    return jnp.asarray(T.THETA0), jnp.asarray(T.PHI0)


def sampler_log_probs(kind, theta, phi):
    if kind == "pf":
        return T.log_pf(theta)
    if kind == "behaviour":
        return T.log_pf(jnp.asarray(T.THETA_BEHAVIOUR))
    if kind == "pstar":
        return T.log_pstar(phi)
    raise AssertionError(kind)


def take(theta, phi, idx):
    return Batch(
        T.log_pf(theta)[idx],
        T.log_pb(phi)[idx],
        T.log_reward()[idx],
        T.log_pf(jnp.asarray(T.THETA_BEHAVIOUR))[idx],
    )


def per_batch_grads(loss, batch_size, log_z=0.0):
    """Gradients of ``loss(batch, log_z)`` w.r.t. (theta, phi, log_z) for every ordered batch."""
    theta, phi = params()
    idx = jnp.asarray(T.all_batches(batch_size))

    def surrogate(theta, phi, log_z, i):
        return loss(take(theta, phi, i), log_z)

    g = jax.vmap(jax.grad(surrogate, argnums=(0, 1, 2)), in_axes=(None, None, None, 0))
    return idx, g(theta, phi, jnp.asarray(log_z), idx)


def expected_grads(loss, batch_size, sampler="pf", log_z=0.0):
    """Exact E over i.i.d. batches from ``sampler`` of the surrogate's gradients."""
    theta, phi = params()
    idx, grads = per_batch_grads(loss, batch_size, log_z)
    probs = T.batch_probs(sampler_log_probs(sampler, theta, phi), idx)
    np.testing.assert_allclose(jnp.sum(probs), 1.0, rtol=1e-12)
    return T.expectation(grads, probs)


def true_grads(divergence, *args):
    theta, phi = params()
    return jax.grad(divergence, argnums=(0, 1))(theta, phi, *args)


def close(a, b, rtol=1e-9, atol=1e-11):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def tb(b, log_z):
    return jnp.mean((log_z + b.pf - b.r - b.pb) ** 2)


def log_variance(b, _):
    delta = b.pf - b.r - b.pb
    return jnp.mean((delta - jnp.mean(delta)) ** 2)


# --- the tiny DAG itself -------------------------------------------------------------------


def test_tiny_enum_is_consistent():
    theta, phi = params()
    assert T.log_pf(theta).dtype == jnp.float64
    close(jnp.sum(jnp.exp(T.log_pf(theta))), 1.0)
    close(jnp.sum(jnp.exp(T.log_pstar(phi))), 1.0)
    assert T.kl_reverse(theta, phi) > 0.1 and T.kl_forward(theta, phi) > 0.1
    # Rényi and Tsallis values tend to KL(P_F||P*) as alpha -> 1.
    for a in (1 - 1e-6, 1 + 1e-6):
        close(T.renyi(theta, phi, a), T.kl_reverse(theta, phi), rtol=1e-5)
        close(T.tsallis(theta, phi, a), T.kl_reverse(theta, phi), rtol=1e-5)
    g_theta, g_phi = true_grads(T.kl_reverse)
    assert jnp.linalg.norm(g_theta) > 0.1 and jnp.linalg.norm(g_phi) > 0.01


# --- trajectory balance and VarGrad vs the reverse KL --------------------------------------


@pytest.mark.parametrize("log_z", [-2.0, 0.0, 1.7])
def test_on_policy_tb_gradient_is_twice_reverse_kl(log_z):
    g_theta, _, _ = expected_grads(tb, 1, log_z=log_z)
    kl_theta, _ = true_grads(T.kl_reverse)
    close(g_theta, 2.0 * kl_theta)


def test_vargrad_is_scaled_leave_one_out_per_batch():
    n = 3
    _, (vg_theta, _, _) = per_batch_grads(log_variance, n)
    _, (loo_theta, _, _) = per_batch_grads(lambda b, _: D.reverse_kl(b.pf, b.pb, b.r, "loo"), n)
    assert jnp.abs(loo_theta).max() > 0.1
    close(vg_theta, 2.0 * (n - 1) / n * loo_theta)


# --- reverse KL ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
def test_reverse_kl_loo_is_unbiased(n):
    g_theta, g_phi, _ = expected_grads(lambda b, _: D.reverse_kl(b.pf, b.pb, b.r, "loo"), n)
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    close(g_theta, kl_theta)
    close(g_phi, kl_phi)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("log_z", [-1.0, 2.5])
def test_reverse_kl_global_is_unbiased_and_trains_log_z(n, log_z):
    loss = lambda b, lz: D.reverse_kl(b.pf, b.pb, b.r, "global", log_z=lz)  # noqa: E731
    g_theta, g_phi, g_log_z = expected_grads(loss, n, log_z=log_z)
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    close(g_theta, kl_theta)
    close(g_phi, kl_phi)
    theta, phi = params()
    mean_delta = jnp.sum(jnp.exp(T.log_pf(theta)) * T.delta(theta, phi))
    close(g_log_z, 2.0 * (mean_delta + log_z))


def test_reverse_kl_global_is_half_tb_per_batch():
    """Per batch: theta-gradient = TB's / 2, log_z-gradient = TB's (VI, Malkin et al.)."""
    loss = lambda b, lz: D.reverse_kl(b.pf, b.pb, b.r, "global", log_z=lz)  # noqa: E731
    _, (g_theta, _, g_log_z) = per_batch_grads(loss, 2, log_z=0.4)
    _, (tb_theta, _, tb_log_z) = per_batch_grads(tb, 2, log_z=0.4)
    close(g_theta, 0.5 * tb_theta)
    close(g_log_z, tb_log_z)


def test_reverse_kl_no_baseline_is_unbiased():
    g_theta, g_phi, _ = expected_grads(lambda b, _: D.reverse_kl(b.pf, b.pb, b.r, "none"), 1)
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    close(g_theta, kl_theta)
    close(g_phi, kl_phi)


@pytest.mark.parametrize("n", [2, 3])
def test_reverse_kl_mean_baseline_is_shrunk_by_n_minus_1_over_n(n):
    g_theta, g_phi, _ = expected_grads(lambda b, _: D.reverse_kl(b.pf, b.pb, b.r, "mean"), n)
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    close(g_theta, (n - 1) / n * kl_theta)
    close(g_phi, kl_phi)  # the pathwise -log P_B term has no baseline


@pytest.mark.parametrize("baseline,n", [("none", 1), ("loo", 2), ("global", 2)])
def test_reverse_kl_off_policy_is_unbiased(baseline, n):
    log_z = 0.7 if baseline == "global" else None

    def loss(b, lz):
        return D.reverse_kl(b.pf, b.pb, b.r, baseline, log_z=None if log_z is None else lz, log_pi=b.pi)

    g_theta, g_phi, _ = expected_grads(loss, n, sampler="behaviour", log_z=0.7)
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    close(g_theta, kl_theta)
    close(g_phi, kl_phi)
    # Without the importance weights the same samples give a wrong gradient.
    plain = lambda b, _: D.reverse_kl(b.pf, b.pb, b.r, "none")  # noqa: E731
    g_theta_plain, _, _ = expected_grads(plain, 1, sampler="behaviour")
    assert jnp.linalg.norm(g_theta_plain - kl_theta) > 1e-2


# --- Rényi and Tsallis ---------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1 - 1e-4, 1 + 1e-4])
@pytest.mark.parametrize("n", [2, 3])
def test_renyi_tends_to_reverse_kl(alpha, n):
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    loo = lambda b, _: D.renyi(b.pf, b.pb, b.r, alpha, "loo")  # noqa: E731
    g_theta, g_phi, _ = expected_grads(loo, n)
    close(g_theta, kl_theta, rtol=2e-3, atol=1e-6)
    close(g_phi, kl_phi, rtol=2e-3, atol=1e-6)
    # Without the control variate the self-normalization acts as the batch-mean baseline.
    none = lambda b, _: D.renyi(b.pf, b.pb, b.r, alpha, "none")  # noqa: E731
    g_theta, _, _ = expected_grads(none, n)
    close(g_theta, (n - 1) / n * kl_theta, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("control_variate", ["loo", "none"])
def test_renyi_is_consistent(control_variate):
    alpha = 0.5
    target, _ = true_grads(T.renyi, alpha)
    loss = lambda b, _: D.renyi(b.pf, b.pb, b.r, alpha, control_variate)  # noqa: E731
    sizes = (2, 3, 4) if control_variate == "loo" else (1, 2, 3, 4)
    errors = [float(jnp.linalg.norm(expected_grads(loss, n)[0] - target)) for n in sizes]
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.6 * errors[0], errors  # O(1/B) bias


@pytest.mark.parametrize("alpha", [1 - 1e-4, 1 + 1e-4])
@pytest.mark.parametrize("rescale", [True, False])
def test_tsallis_tends_to_reverse_kl(alpha, rescale):
    kl_theta, kl_phi = true_grads(T.kl_reverse)
    loss = lambda b, _: D.tsallis(b.pf, b.pb, b.r, alpha, "loo", rescale=rescale)  # noqa: E731
    g_theta, g_phi, _ = expected_grads(loss, 2)
    close(g_theta, kl_theta, rtol=2e-3, atol=1e-6)
    close(g_phi, kl_phi, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
@pytest.mark.parametrize("control_variate,n", [("none", 1), ("loo", 2)])
def test_tsallis_unrescaled_is_unbiased_up_to_z(alpha, control_variate, n):
    loss = lambda b, _: D.tsallis(b.pf, b.pb, b.r, alpha, control_variate, rescale=False)  # noqa: E731
    g_theta, g_phi, _ = expected_grads(loss, n)
    t_theta, t_phi = true_grads(T.tsallis, alpha)
    scale = np.exp((1.0 - alpha) * T.LOG_Z)  # E[estimate] = Z^{1-alpha} grad T_alpha
    close(g_theta, scale * t_theta)
    close(g_phi, scale * t_phi)
    # The rescaled (safe) form multiplies each batch by its own factor: no longer this.
    safe = lambda b, _: D.tsallis(b.pf, b.pb, b.r, alpha, control_variate, rescale=True)  # noqa: E731
    g_safe, _, _ = expected_grads(safe, 2)
    cos = jnp.vdot(g_safe, t_theta) / jnp.linalg.norm(g_safe) / jnp.linalg.norm(t_theta)
    assert cos > 0.5
    assert jnp.linalg.norm(g_safe - scale * t_theta) > 1e-3


# --- forward KL, wake-sleep ----------------------------------------------------------------


@pytest.mark.parametrize("sampler,n", [("pf", 1), ("pf", 2), ("behaviour", 2)])
def test_forward_kl_unnormalized_is_unbiased_up_to_z(sampler, n):
    def loss(b, _):
        return D.forward_kl(b.pf, b.pb, b.r, normalized=False, log_pi=b.pi if sampler == "behaviour" else None)

    g_theta, g_phi, _ = expected_grads(loss, n, sampler=sampler)
    fkl_theta, _ = true_grads(T.kl_forward)
    close(g_theta / np.exp(T.LOG_Z), fkl_theta)
    close(g_phi, jnp.zeros_like(g_phi))


def test_forward_kl_self_normalized_is_consistent():
    fkl_theta, _ = true_grads(T.kl_forward)
    loss = lambda b, _: D.forward_kl(b.pf, b.pb, b.r, normalized=True)  # noqa: E731
    grads = [expected_grads(loss, n)[0] for n in (1, 2, 3, 4)]
    close(grads[0], jnp.zeros_like(grads[0]))  # B = 1: weight 1, E[grad log P_F] = 0
    errors = [float(jnp.linalg.norm(g - fkl_theta)) for g in grads]
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("sampler", ["pf", "behaviour"])
def test_wake_sleep(sampler):
    def loss(b, _):
        return D.wake_sleep(b.pf, b.pb, b.r, log_pi=b.pi if sampler == "behaviour" else None)

    _, kl_phi = true_grads(T.kl_reverse)
    fkl_theta, _ = true_grads(T.kl_forward)
    errors = []
    for n in (1, 2, 3):
        g_theta, g_phi, _ = expected_grads(loss, n, sampler=sampler)
        close(g_phi, kl_phi)  # P_B: exact reverse-KL gradient
        errors.append(float(jnp.linalg.norm(g_theta - fkl_theta)))
    assert errors[2] < errors[1] < errors[0], errors


def test_reverse_wake_sleep():
    loss = lambda b, _: D.reverse_wake_sleep(b.pf, b.pb, b.r)  # noqa: E731
    fkl_theta, _ = true_grads(T.kl_forward)
    _, kl_phi = true_grads(T.kl_reverse)
    errors = []
    for n in (1, 2, 3):
        g_theta, g_phi, _ = expected_grads(loss, n, sampler="pstar")
        close(g_theta, fkl_theta)  # P_F: exact maximum likelihood on samples from P*
        errors.append(float(jnp.linalg.norm(g_phi - kl_phi)))
    close(errors[0], float(jnp.linalg.norm(kl_phi)))  # B = 1: expectation 0
    assert errors[2] < errors[1] < errors[0], errors


# --- alpha-KL ------------------------------------------------------------------------------


def _score_sq_norms():
    theta, _ = params()
    jac = jax.jacobian(T.log_pf)(theta)  # [N, P]: per-trajectory score
    return jnp.sum(jac**2, axis=1)


def expected_alpha_kl_grads(alpha, control_variate, n_fwd, n_bwd, log_z=0.3):
    theta, phi = params()
    idx = jnp.asarray(T.all_batches(n_fwd + n_bwd))
    sq = _score_sq_norms()

    def surrogate(theta, phi, lz, i):
        f, b = take(theta, phi, i[:n_fwd]), take(theta, phi, i[n_fwd:])
        c = control_variate
        if c == "optimal":
            delta = jax.lax.stop_gradient(f.pf - f.r - f.pb)
            c = -cv.loo_weighted_mean(delta, sq[i[:n_fwd]])
        return D.alpha_kl(
            f.pf, f.pb, f.r, alpha, b.pf, b.pb, b.r,
            control_variate=c, log_z=lz if control_variate == "learned" else None,
        )

    grads = jax.vmap(jax.grad(surrogate, argnums=(0, 1)), in_axes=(None, None, None, 0))(
        theta, phi, jnp.asarray(log_z), idx
    )
    log_p = jnp.concatenate(
        [jnp.sum(T.log_pf(theta)[idx[:, :n_fwd]], 1, keepdims=True),
         jnp.sum(T.log_pstar(phi)[idx[:, n_fwd:]], 1, keepdims=True)], axis=1)
    probs = jnp.exp(jnp.sum(log_p, axis=1))
    close(jnp.sum(probs), 1.0)
    return T.expectation(grads, probs)


@pytest.mark.parametrize(
    "alpha,control_variate,n_fwd,n_bwd",
    [
        (0.3, "none", 1, 1),
        (0.3, "learned", 1, 2),
        (0.3, "loo_mean", 2, 2),
        (0.6, "loo_logmeanexp", 2, 2),
        (0.6, "optimal", 2, 1),
        (0.0, "loo_mean", 2, 1),
        (1.0, "loo_mean", 2, 2),
    ],
)
def test_alpha_kl_is_unbiased(alpha, control_variate, n_fwd, n_bwd):
    g_theta, g_phi = expected_alpha_kl_grads(alpha, control_variate, n_fwd, n_bwd)
    r_theta, r_phi = true_grads(T.kl_reverse)
    f_theta, f_phi = true_grads(T.kl_forward)
    close(g_theta, (1 - alpha) * r_theta + alpha * f_theta)
    close(g_phi, (1 - alpha) * r_phi + alpha * f_phi)


def test_alpha_kl_zero_needs_no_backward_batch():
    """alpha = 0 without a backward batch is the reverse KL with the leave-one-out baseline: the
    same surrogate (c = loo_mean(-delta) = -b), so the same value and gradient."""
    theta, phi = params()
    lf, lb, lr = T.log_pf(theta)[:3], T.log_pb(phi)[:3], T.log_reward()[:3]
    g1 = jax.grad(lambda t: D.alpha_kl(T.log_pf(t)[:3], lb, lr, 0.0))(theta)
    g2 = jax.grad(lambda t: D.reverse_kl(T.log_pf(t)[:3], lb, lr, "loo"))(theta)
    close(g1, g2)
    close(D.alpha_kl(lf, lb, lr, 0.0), D.reverse_kl(lf, lb, lr, "loo"))


# --- numerically safe forms ----------------------------------------------------------------


def test_safe_forms_have_finite_gradients_for_huge_log_weights():
    with jax.enable_x64(False):  # the default float32, where exp overflows at ~88
        log_pb = jnp.array([0.0, -1.0, -2.0, 0.5])
        log_reward = jnp.array([1e4, -1e4, 5e3, -3e3])
        params32 = jnp.array([-1.0, -2.0, -0.5, -3.0])
        z = jnp.array(0.0)
        losses = {
            "renyi0.5": lambda lf: D.renyi(lf, log_pb, log_reward, 0.5),
            "renyi2": lambda lf: D.renyi(lf, log_pb, log_reward, 2.0, "none"),
            "tsallis0.5": lambda lf: D.tsallis(lf, log_pb, log_reward, 0.5),
            "tsallis2": lambda lf: D.tsallis(lf, log_pb, log_reward, 2.0, "none"),
            "forward_kl": lambda lf: D.forward_kl(lf, log_pb, log_reward),
            "reverse_kl": lambda lf: D.reverse_kl(lf, log_pb, log_reward, "global", log_z=z),
            "alpha_kl": lambda lf: D.alpha_kl(
                lf, log_pb, log_reward, 0.5, lf, log_pb, log_reward, "loo_logmeanexp"),
            "wake_sleep": lambda lf: D.wake_sleep(lf, log_pb, log_reward),
            "reverse_wake_sleep": lambda lf: D.reverse_wake_sleep(lf, log_pb, log_reward),
        }
        for name, loss in losses.items():
            g = jax.grad(loss)(params32)
            assert g.dtype == jnp.float32
            assert jnp.all(jnp.isfinite(g)) and jnp.any(g != 0), (name, g)
        # The unrescaled Tsallis form overflows: the rescaling is what makes it safe.
        g = jax.grad(lambda lf: D.tsallis(lf, log_pb, log_reward, 0.5, rescale=False))(params32)
        assert not jnp.all(jnp.isfinite(g))


# --- flow matching -------------------------------------------------------------------------


def _fm_reference(log_edge_flows):
    """Direct per-state loop (numpy), independent of the gathered layout."""
    f = np.exp(np.asarray(log_edge_flows))
    terms = []
    for s in range(T.N_STATES):
        ins = [f[e] for e, (_, c) in enumerate(T.EDGES) if c == s]
        if not ins:
            continue
        outs = [f[e] for e, (p, _) in enumerate(T.EDGES) if p == s]
        r = T.REWARD.get(s, 0.0)
        terms.append((np.log(sum(ins)) - np.log(r + sum(outs))) ** 2)
    return np.mean(terms)


def test_flow_matching():
    _, phi = params()
    exact = T.exact_log_edge_flows(phi)
    loss = lambda lf: D.flow_matching(*T.gather_flows(lf), T.state_log_reward())  # noqa: E731
    assert float(loss(exact)) < 1e-25
    perturbed = exact + jnp.asarray(np.random.default_rng(0).normal(size=T.N_EDGES))
    value = loss(perturbed)
    assert value > 1e-2
    close(value, _fm_reference(perturbed))
    # Padded slots may hold anything (here NaN): no NaN leaks into value or gradient.
    def loss_nan(lf):
        log_in, in_mask, log_out, out_mask = T.gather_flows(lf)
        log_in = jnp.where(in_mask, log_in, jnp.nan)
        log_out = jnp.where(out_mask, log_out, jnp.nan)
        return D.flow_matching(log_in, in_mask, log_out, out_mask, T.state_log_reward())

    close(loss_nan(perturbed), value)
    g = jax.grad(loss_nan)(perturbed)
    assert jnp.all(jnp.isfinite(g)) and jnp.all(g != 0)
    # Excluding states by state_mask.
    keep = np.asarray(T.IN_MASK).any(1) & (np.arange(T.N_STATES) != T.X3)
    log_in, in_mask, log_out, out_mask = T.gather_flows(perturbed)
    partial = D.flow_matching(log_in, in_mask, log_out, out_mask, T.state_log_reward(), jnp.asarray(keep))
    assert not np.isclose(float(partial), float(value))


# --- bad arguments -------------------------------------------------------------------------


def _arrays(n=3, dtype=jnp.float64):
    return tuple(jnp.linspace(-1.0, 1.0, n, dtype=dtype) * k for k in (1.0, 0.5, 2.0))


BAD_CALLS = [
    ("unknown baseline", lambda a: D.reverse_kl(*a, baseline="median"), ValueError,
     r"baseline='median' is not one of \('none', 'mean', 'loo', 'global'\)"),
    ("global without log_z", lambda a: D.reverse_kl(*a, baseline="global"), ValueError, "log_z"),
    ("log_z with loo", lambda a: D.reverse_kl(*a, log_z=jnp.array(0.0)), ValueError, "only used"),
    ("loo with B=1", lambda a: D.reverse_kl(*(x[:1] for x in a)), ValueError, "at least 2"),
    ("log_z not scalar", lambda a: D.reverse_kl(*a, "global", log_z=jnp.zeros(3)), AssertionError, "rank"),
    ("shape mismatch", lambda a: D.reverse_kl(a[0], a[1][:2], a[2], "none"), AssertionError, "shape"),
    ("rank 2", lambda a: D.forward_kl(a[0][None], a[1][None], a[2][None]), ValueError, r"shape \[B\]"),
    ("integer dtype", lambda a: D.forward_kl(a[0], a[1], jnp.arange(3)), AssertionError, "type"),
    ("log_pi shape", lambda a: D.forward_kl(*a, log_pi=a[0][:2]), AssertionError, "shape"),
    ("renyi alpha=1", lambda a: D.renyi(*a, 1.0), ValueError, "use reverse_kl"),
    ("tsallis alpha=1", lambda a: D.tsallis(*a, 1), ValueError, "use reverse_kl"),
    ("renyi alpha<0", lambda a: D.renyi(*a, -0.5), ValueError, "> 0"),
    ("tsallis alpha nan", lambda a: D.tsallis(*a, float("nan")), ValueError, "> 0"),
    ("renyi cv", lambda a: D.renyi(*a, 0.5, "mean"), ValueError, r"\('none', 'loo'\)"),
    ("tsallis loo B=1", lambda a: D.tsallis(*(x[:1] for x in a), 0.5), ValueError, "at least 2"),
    ("alpha_kl alpha>1", lambda a: D.alpha_kl(*a, 1.5, *a), ValueError, r"\[0, 1\]"),
    ("alpha_kl no bwd", lambda a: D.alpha_kl(*a, 0.5), ValueError, "backward-sampled"),
    ("alpha_kl cv", lambda a: D.alpha_kl(*a, 0.5, *a, control_variate="loo"), ValueError, "loo_logmeanexp"),
    ("alpha_kl learned", lambda a: D.alpha_kl(*a, 0.5, *a, control_variate="learned"), ValueError, "log_z"),
    ("alpha_kl cv shape", lambda a: D.alpha_kl(*a, 0.5, *a, control_variate=jnp.zeros(2)), AssertionError, "shape"),
    ("traced alpha", lambda a: jax.jit(lambda al: D.renyi(*a, al))(0.5), TypeError, "static"),
]


@pytest.mark.parametrize("name,call,exc,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call(_arrays())


def test_flow_matching_bad_arguments():
    log_in, in_mask, log_out, out_mask = T.gather_flows(T.exact_log_edge_flows(jnp.asarray(T.PHI0)))
    lr = T.state_log_reward()
    with pytest.raises(AssertionError):
        D.flow_matching(log_in, in_mask[:, :2], log_out, out_mask, lr)
    with pytest.raises(AssertionError):
        D.flow_matching(log_in, in_mask.astype(jnp.float64), log_out, out_mask, lr)
    with pytest.raises(ValueError, match="leading"):
        D.flow_matching(log_in, in_mask, log_out, out_mask, lr[:5])


def test_estimators_jit():
    """Under jit (alpha static, closed over) the estimators are the eager ones: the same value,
    and the exact expected gradient on the enumerated DAG."""
    a = _arrays(4)
    f = lambda x, y, z: D.renyi(x, y, z, 0.5) + D.alpha_kl(x, y, z, 0.5, x, y, z)  # noqa: E731
    close(jax.jit(f)(*a), f(*a), rtol=1e-12)
    alpha, n = 0.5, 2
    loss = jax.jit(lambda pf, pb, r: D.tsallis(pf, pb, r, alpha, "loo", rescale=False))
    g_theta, g_phi, _ = expected_grads(lambda b, _: loss(b.pf, b.pb, b.r), n)
    t_theta, t_phi = true_grads(T.tsallis, alpha)
    scale = np.exp((1.0 - alpha) * T.LOG_Z)  # E[estimate] = Z^{1-alpha} grad T_alpha
    close(g_theta, scale * t_theta)
    close(g_phi, scale * t_phi)
