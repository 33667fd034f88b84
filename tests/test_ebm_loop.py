"""EB-GFN through the one loop (``gfnem_jax.loop``): the model side's gradient is the exact NLL's,
objectives by name train the sampler, settings are checked, and 1 vs 2 devices give the same run.

(The library-level identity grad NLL = E_data[grad E] - E_p[grad E] is checked on a hand-written
surrogate in test_ebm_env_data.py; here it is the training code's own model ``Update``.)
"""
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _o2 import with_device_flags

from gfnem_jax import ebgfn, loop
from gfnem_jax.envs.bits import all_binary
from gfnem_jax.experiments import ebm, ebm_eval
from gfnem_jax.models import energy

TINY = dict(bits=2, energy_hidden=8, energy_layers=2, gfn_hidden=16, gfn_layers=1, batch_size=16)


def _flat(tree):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(tree)])


def test_model_update_gradient_with_exact_model_samples_is_grad_nll(float64):
    """The model Update (terms + reduce on the global batch, energy_l2 = 0) with negatives = every
    state weighted by p_phi gives grad NLL exactly; with exact samples of p_phi (weights 1) its
    gradient is an unbiased estimate of it (checked against the sampling error)."""
    e = ebgfn.make(ebm.EBMSettings(**TINY, energy_l2=0.0), 4)
    phi = jax.tree.map(lambda a: 3.0 * a.astype(jnp.float64), e.model.init(jax.random.PRNGKey(0)))
    X = all_binary(4).astype(jnp.float64)
    data = X[jax.random.randint(jax.random.PRNGKey(1), (24,), 0, 16)]
    upd = ebgfn.model_update(e)
    g_nll = _flat(jax.grad(lambda p: energy.exact_nll(e.model, p, data))(phi))
    p_phi = jnp.exp(energy.log_probs(e.model, phi))
    aux = {"x": data, "neg": X, "w": p_phi}
    loss, _, g = loop.global_grad(upd, phi, None, aux, loop.Shard())
    np.testing.assert_allclose(_flat(g), g_nll, rtol=1e-9, atol=1e-12)
    # the loss value is mean E(data) - E_p[E]
    ref = jnp.mean(energy.energies(e.model, phi, data)) - jnp.sum(p_phi * energy.energies(e.model, phi, X))
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-12)
    # exact samples, weights 1: Monte Carlo, per-coordinate error within 5 standard errors
    n = 2000
    neg = jnp.asarray(ebm_eval.sample_exact(e.model, phi, jax.random.PRNGKey(2), n), jnp.float64)
    _, _, g_mc = loop.global_grad(upd, phi, None, {"x": data, "neg": neg, "w": jnp.ones(n)},
                                  loop.Shard())
    per = jax.vmap(lambda x: _flat_j(jax.grad(lambda p: e.model.energy(p, x))(phi)))(neg)
    se = np.asarray(jnp.std(per, 0)) / np.sqrt(n)
    assert np.all(np.abs(_flat(g_mc) - g_nll) < 5 * se + 1e-9)
    # power: uniform negatives (the wrong distribution) are far off
    _, _, g_u = loop.global_grad(upd, phi, None, {"x": data, "neg": X, "w": jnp.ones(16)},
                                 loop.Shard())
    assert np.max(np.abs(_flat(g_u) - g_nll) / (5 * se + 1e-9)) > 3


def _flat_j(tree):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])


def _old_chain_update(e):
    """The chains' side as earlier versions wrote it: an Update with a fake loss
    1/2 ||c - c'||^2 per chain and SGD at rate 1 (landing on c')."""
    import optax
    from gfnem_jax import mcmc
    s, B = e.settings, e.settings.batch_size

    def prepare(chains, phi, batch, key, shard):
        b = B // shard.count
        rows = shard.offset(b) + jnp.arange(b)
        x = chains[rows]
        if s.method == "pcd":
            return {"rows": rows, "new": mcmc.gibbs(e.model.energy, phi, key, x, s.mcmc_steps,
                                                    index_offset=shard.offset(b))}
        new, acc = mcmc.gwg_chains(e.model.energy, phi, key, x, s.mcmc_steps, shard.offset(b))
        return {"rows": rows, "new": new, "acc": acc}

    def terms(chains, phi, aux):
        return 0.5 * jnp.sum((chains[aux["rows"]] - aux["new"]) ** 2, axis=1)

    def reduce(q, aux):
        total = jnp.sum(q)
        m = {"accept": jnp.mean(aux["acc"])} if "acc" in aux else {}
        return total - jax.lax.stop_gradient(total), m

    return loop.Update(prepare, terms, reduce, optax.sgd(1.0))


@pytest.mark.parametrize("method", ["pcd", "gwg"])
def test_chain_move_is_the_old_sgd_update_bitwise_without_optimizer_state(method):
    """The chains' loop.Move moves them, and trains phi, bitwise as the old fake-loss Update with
    SGD at rate 1 (4 steps of the whole loop step); it carries no optimizer state: the slot holds
    no array, comes back untouched, and loop.init_state with tx None puts None there."""
    s = ebm.EBMSettings(**TINY, method=method, mcmc_steps=3, n_train=200)
    e = ebgfn.make(s, 4)
    st0 = ebgfn.init_state(e, 0)
    assert jax.tree.leaves(st0.sampler_opt) == [] and st0.sampler_opt is ebgfn.CHAINS_OPT_SLOT
    assert loop.init_state(st0.sampler, None).sampler_opt is None
    move = ebgfn.chain_move(e)
    assert isinstance(move, loop.Move) and move.tx is None
    chains, opt, loss, m = loop.apply_update(move, st0.sampler, st0.sampler_opt, st0.model, {},
                                             jax.random.PRNGKey(3), loop.Shard())
    assert opt is st0.sampler_opt and float(loss) == 0.0 and loss.dtype == jnp.float32
    assert not np.array_equal(np.asarray(chains), np.asarray(st0.sampler))  # it moved
    train = jnp.asarray(ebm.load_data(s)[0], jnp.float32)
    new = ebgfn.make_chunk(e, 4)
    old_step = loop.make_step(_old_chain_update(e), ebgfn.model_update(e), loop.Schedule("both"))
    old = loop.make_chunk(old_step, 4, ebgfn.batch_fn(e))
    old0 = st0._replace(sampler_opt=_old_chain_update(e).tx.init(st0.sampler))
    (st_n, m_n), (st_o, m_o) = new(st0, train), old(old0, train)
    np.testing.assert_array_equal(np.asarray(st_n.sampler), np.asarray(st_o.sampler))
    assert _flat(st_n.model).tobytes() == _flat(st_o.model).tobytes()
    assert _flat(st_n.model_opt).tobytes() == _flat(st_o.model_opt).tobytes()
    assert m_n.keys() == m_o.keys()
    for k in m_n:
        np.testing.assert_array_equal(np.asarray(m_n[k]), np.asarray(m_o[k]), err_msg=k)


def test_loss_by_name_trains_the_sampler():
    """loss "db" by name picks the objective; with the energy (nearly) frozen the sampler's exact
    terminal distribution moves toward p_phi."""
    s = ebm.EBMSettings(**TINY, loss="db", lr=1e-12, lr_gfn=2e-2, n_train=200)
    s.validate()
    e = ebgfn.make(s, 4)
    assert e.gfn.objective.name == "db"
    st0 = ebgfn.init_state(e, 0)
    st0 = st0._replace(model=jax.tree.map(lambda a: 4.0 * a, st0.model))  # a peaked target
    train = jnp.asarray(ebm.load_data(s)[0], jnp.float32)
    st, m = ebgfn.make_chunk(e, 40)(st0, train)
    assert np.all(np.isfinite(np.asarray(m["loss"]))) and "log_z" not in m  # db has no log Z
    tv0 = ebm_eval.sampler_tv(e, st0.sampler, st0.model, jax.random.PRNGKey(0))[0]
    tv1 = ebm_eval.sampler_tv(e, st.sampler, st.model, jax.random.PRNGKey(0))[0]
    assert tv1 < 0.5 * tv0, (tv0, tv1)
    assert float(np.mean(m["loss"][-10:])) < float(np.mean(m["loss"][:10]))


def test_settings_checks():
    with pytest.raises(ValueError, match="back_ratio must be 0 with loss renyi"):
        ebm.EBMSettings(loss="renyi").validate()
    ebm.EBMSettings(loss="renyi", back_ratio=0.0).validate()
    ebm.EBMSettings(loss="renyi", method="pcd").validate()  # the loss is not used by pcd
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        ebm.EBMSettings(devices=jax.device_count() + 1).validate()
    with pytest.raises(ValueError, match="lam must be"):
        ebm.EBMSettings(loss="subtb", lam=0.0).validate()


def test_cli_flags_from_the_settings():
    """--loss / --lam / --alpha / --devices come from the declared settings (no CLI code)."""
    from gfnem_jax import cli
    a = cli.build_parser().parse_args(["train", "ebm", "--loss", "subtb", "--lam", "0.5",
                                       "--alpha", "0.3", "--devices", "1", "--out", "x"])
    s = cli.settings_from_args(ebm.EBMSettings, a)
    assert (s.loss, s.lam, s.alpha, s.devices) == ("subtb", 0.5, 0.3, 1)
    obj = ebgfn.make(s, 4).gfn.objective
    assert (obj.name, obj.lam) == ("subtb", 0.5)


SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = XLA_FLAGS_HERE
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    from gfnem_jax import loop
    from gfnem_jax import ebgfn
    from gfnem_jax.experiments import ebm
    assert jax.device_count() == 2
    flat = lambda t: np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(t)])
    TINY = dict(bits=2, energy_hidden=8, energy_layers=2, gfn_hidden=16, gfn_layers=1,
                batch_size=8, n_train=200, mcmc_steps=2)
    CASES = {"gfn-cd": dict(k_warmup=4, gfn_updates=2, loss="subtb"),  # k schedule, 2 updates
             "gwg": {},
             "gfn": {}}  # importance-weighted negatives: softmax over the global batch
    for method, extra in CASES.items():
        s = ebm.EBMSettings(**TINY, method=method, **extra)
        e = ebgfn.make(s, 4)
        train = np.asarray(ebm.load_data(s)[0], np.float32)
        res = []
        for nd in (1, 2):
            run_chunk = ebgfn.make_chunk(e, 6, loop.make_mesh(nd))
            for _ in range(1 if nd == 1 else 2):  # 2 devices: a rerun
                st, m = run_chunk(ebgfn.init_state(e, 0), train)
                res.append((flat(st.sampler), flat(st.model), jax.device_get(m)))
        (s1, p1, m1), (s2, p2, m2), (s3, p3, m3) = res
        assert m1.keys() == m2.keys()
        for k in m1:
            np.testing.assert_allclose(m1[k], m2[k], rtol=2e-4, atol=1e-5, err_msg=method + k)
        np.testing.assert_allclose(s1, s2, rtol=2e-3, atol=2e-5, err_msg=method)
        np.testing.assert_allclose(p1, p2, rtol=2e-3, atol=2e-5, err_msg=method)
        assert s2.tobytes() == s3.tobytes() and p2.tobytes() == p3.tobytes(), method  # bitwise
        assert not np.allclose(p1, flat(ebgfn.init_state(e, 0).model))  # it did train
    print("OK")
""")


def test_two_devices_agree_with_one():
    """gfn-cd (subtb, k schedule, gfn_updates 2), gwg (chains in the sampler slot) and gfn
    (importance-weighted negatives, normalised over the global batch): a
    tiny run on 1 and on 2 CPU devices gives the same metrics and parameters to float tolerance
    (every statistic over the global batch, every sample keyed by its global index); a rerun on
    2 devices is bitwise identical."""
    r = subprocess.run([sys.executable, "-c", with_device_flags(SCRIPT, 2)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK" in r.stdout


def test_importance_weighted_gfn_negatives_estimate_the_model_expectation(float64):
    """neg_weights "is": the sampler's negatives x' ~ P_F carry log w = -E(x') + log P_B(tau|x') -
    log P_F(tau). exp(log w) is an unbiased estimate of Z_phi = sum_x exp(-E(x)) and the
    self-normalised weights give E_{p_phi}[E] (the term the energy's gradient needs), checked by
    enumeration at d = 4 with a peaked p_phi and the initial policy, far from it (the unweighted mean
    is far off)."""
    e = ebgfn.make(ebm.EBMSettings(**TINY, method="gfn", neg_weights="is"), 4)
    st = ebgfn.init_state(e, 0)
    gp = jax.tree.map(lambda a: a.astype(jnp.float64), st.sampler)
    phi = jax.tree.map(lambda a: 3.0 * a.astype(jnp.float64), e.model.init(jax.random.PRNGKey(3)))
    X = all_binary(4).astype(jnp.float64)
    e_all = energy.energies(e.model, phi, X)
    z = float(jnp.sum(jnp.exp(-e_all)))
    mean_p = float(jnp.sum(jax.nn.softmax(-e_all) * e_all))
    n = 20000
    aux = ebgfn.model_update(e).prepare(phi, gp, {"x": jnp.zeros((n, 4))}, jax.random.PRNGKey(4),
                                        loop.Shard())
    w = np.exp(np.asarray(aux["logw"]))
    e_neg = np.asarray(energy.energies(e.model, phi, aux["neg"]))
    assert abs(w.mean() - z) < 5 * w.std() / np.sqrt(n)
    est = float(np.sum(w * e_neg) / np.sum(w))
    assert abs(est - mean_p) < 0.02 * abs(mean_p) + 0.02
    assert abs(float(e_neg.mean()) - mean_p) > 10 * abs(est - mean_p)  # P_F alone is off
    # the logged effective sample size is (sum w)^2 / (n sum w^2)
    _, m = ebgfn.model_reduce(e, {"pos": jnp.zeros(1), "neg": jnp.zeros(n)}, aux)
    np.testing.assert_allclose(float(m["neg_ess"]), w.sum() ** 2 / (n * (w ** 2).sum()), rtol=1e-6)
