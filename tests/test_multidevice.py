"""Data parallelism over 4 CPU devices vs 1: the same gradients for every objective, including the
ones that couple the batch (leave-one-out, log-variance, self-normalized weights, batch-max
rescaling), because the mesh wrapper computes them over the global batch, and with one-pass
training, a target network (soft_q, munchausen) and a replay buffer; reruns are bitwise."""
import subprocess
import sys
import textwrap

from _o2 import with_device_flags

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = XLA_FLAGS_HERE
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    from gfnem_jax import loop, objectives
    from gfnem_jax.envs.hypergrid import HyperGrid
    from gfnem_jax.experiments.runner import init_state, make_step
    from gfnem_jax.gflownet import GFlowNet
    from gfnem_jax.nets.mlp import MLPPolicy
    from gfnem_jax.optim import OptimConfig
    assert jax.device_count() == 4
    env = HyperGrid(2, 4, r0=0.1)
    OBJ = [objectives.tb(), objectives.subtb(0.9), objectives.logvar(),
           objectives.reverse_kl("loo"), objectives.reverse_kl("mean"), objectives.forward_kl(),
           objectives.renyi(0.5, "loo"), objectives.tsallis(0.5, "loo"),
           objectives.alpha_kl(0.5, "loo"), objectives.wake_sleep(), objectives.fm()]
    flat = lambda t: np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(t)])
    # and one-pass training (the rollout inside the differentiated terms, its trajectories
    # gathered); the RL view: a target network and a replay buffer in the optimizer state
    RUNS = ([(o, False, 0) for o in OBJ] + [(objectives.reverse_kl("loo"), True, 0)]
            + [(objectives.soft_q(tau=0.5), False, 0), (objectives.munchausen(), False, 32),
               (objectives.pcl(rl_correction="none"), False, 0)])
    for obj, one_pass, replay in RUNS:
        gfn = GFlowNet(env, MLPPolicy(env.n_actions, env.n_bwd_actions, hidden=16), obj,
                       one_pass=one_pass)
        st0, tx = init_state(gfn, OptimConfig(lr=1e-2), 0, replay)
        out = []
        for nd in (1, 4):  # one compilation per device count; 4 devices run twice
            chunk = loop.make_chunk(make_step(gfn, tx, 16, nd, replay=replay), 8)
            for _ in range(1 if nd == 1 else 2):
                st, m = chunk(st0)
                out.append((flat(st.sampler), np.asarray(m["loss"]), np.asarray(m["visited"])))
        (a, la, va), (b, lb, vb), (c, lc, vc) = out
        if replay:  # each device trains on its fresh rows then its replayed ones
            va, vb = np.sort(va, -1), np.sort(vb, -1)
        np.testing.assert_array_equal(va, vb, err_msg=obj.name)              # the same samples
        np.testing.assert_allclose(la, lb, rtol=2e-4, atol=1e-5, err_msg=obj.name)  # the same loss
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=obj.name)    # the same params
        assert b.tobytes() == c.tobytes(), obj.name                          # rerun: bitwise
        assert not np.allclose(a, flat(st0.sampler))                          # it did train
    print("OK")
""")


def test_four_devices_agree_with_one_for_every_objective():
    r = subprocess.run([sys.executable, "-c", with_device_flags(SCRIPT, 4)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK" in r.stdout


EM_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = XLA_FLAGS_HERE
    os.environ["JAX_PLATFORMS"] = "cpu"
    import json, sys, numpy as np
    from gfnem_jax.experiments import mixture
    outs = []
    for i, nd in enumerate((1, 4, 4)):
        d = os.path.join(sys.argv[1], str(i))
        r = mixture.run(dict(n_data=400, steps=60, e_steps=10, em_iters=5, log_every=30,
                             batch_size=32, hidden=16, plot=False, devices=nd, sleep_prob=0.5,
                             ls_rounds=1), d, progress=False)
        outs.append(np.load(os.path.join(d, "params.npz")))
    for k in outs[0].files:
        np.testing.assert_allclose(outs[0][k], outs[1][k], rtol=2e-3, atol=2e-5, err_msg=k)
        assert outs[1][k].tobytes() == outs[2][k].tobytes(), k
    print("OK")
""")


def test_mixture_em_on_four_devices(tmp_path):
    r = subprocess.run([sys.executable, "-c", with_device_flags(EM_SCRIPT, 4), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK" in r.stdout
