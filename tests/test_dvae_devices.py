"""dvae data parallelism (``devices``): 1 vs 2 CPU devices give the same run to float tolerance
(GFlowNet-EM with the sleep phase, VQ-VAE with its EMA codebook), a 2-device rerun is bitwise
identical and the state stays identical on every device; 2 processes x 1 device (slow) equal
1 process x 2 devices."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _o2 import device_flags, with_device_flags

SCRIPT = textwrap.dedent("""
    import os, sys
    # optimization level 0: compiles about twice as fast (both device counts alike)
    os.environ["XLA_FLAGS"] = XLA_FLAGS_HERE
    os.environ["JAX_PLATFORMS"] = "cpu"
    import json
    import jax, numpy as np
    # a private compilation cache: the 2-device rerun loads what the first 2-device run compiled
    jax.config.update("jax_compilation_cache_dir", os.path.join(sys.argv[1], "cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from gfnem_jax import checkpoint
    from gfnem_jax.experiments import dvae
    assert jax.device_count() == 2
    TINY = dict(codes=3, grid=2, steps=4, e_steps=2, m_steps=2, batch_size=8, channels=4,
                embed_dim=4, hidden=16, log_every=2, n_test=6, plot=False, checkpoint_minutes=0)
    try:
        dvae.DVAESettings(**dict(TINY, batch_size=7, devices=2)).validate()
        raise AssertionError("batch_size 7 on 2 devices was accepted")
    except ValueError as e:
        assert "batch_size 7 must be divisible by devices 2" in str(e), e

    def rows(d):
        return [{k: v for k, v in json.loads(l).items() if k != "wall_s"}
                for l in open(os.path.join(d, "metrics.jsonl"))]

    for method, extra in (("gflownet", dict(sleep_prob=0.5)), ("vqvae", {})):
        outs = []
        for i, nd in enumerate((1, 2, 2)):
            d = os.path.join(sys.argv[1], f"{method}{i}")
            res = dvae.run(dvae.DVAESettings(**TINY, **extra, method=method, devices=nd), d,
                           progress=False)
            if nd == 2:  # replicated state: every device holds the same bits
                for a in jax.tree.leaves(res["state"]):
                    shards = [np.asarray(s.data) for s in a.addressable_shards]
                    assert len(shards) == 2 and shards[0].tobytes() == shards[1].tobytes()
            leaves = [np.asarray(a) for a in jax.tree.leaves(checkpoint.restore(checkpoint.latest(d)))]
            outs.append((rows(d), leaves))
        (r1, p1), (r2, p2), (r3, p3) = outs
        assert [r["step"] for r in r1] == [2, 4], r1
        if method == "gflownet":
            assert r1[0]["sleep"] == 0.5  # one of the two E-steps took a sleep step
        assert [sorted(r) for r in r1] == [sorted(r) for r in r2]
        for a, b in zip(r1, r2):
            for k in a:
                assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (method, k, a[k], b[k])
        for a, b in zip(p1, p2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=method)
        assert r2 == r3, method                                             # rerun: bitwise
        assert all(a.tobytes() == b.tobytes() for a, b in zip(p2, p3)), method
        assert not all(np.array_equal(a, b) for a, b in zip(p1, [np.asarray(x) for x in jax.tree.leaves(
            dvae.Built(dvae.DVAESettings(**TINY, **extra, method=method),
                       (8, 8), np.zeros((8, 8), np.float32)).state)]))      # it did train

    # a device's shard of the sleep batch (DVAE.sample_rows): rows of the global draw
    from gfnem_jax.models.dvae import DVAE
    for prior in ("uniform", "learned"):
        m = DVAE(image_shape=(8, 8), grid=2, codes=3, channels=4, embed_dim=4, prior=prior,
                 prior_hidden=8)
        theta, key = m.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(5)
        x, z = jax.jit(lambda t, k: m.sample(t, k, 6))(theta, key)
        rows_of = jax.jit(lambda t, k, s: m.sample_rows(t, k, 6, s, 3))
        for start in (0, 3):
            xs, zs = rows_of(theta, key, start)
            assert np.array_equal(np.asarray(zs), np.asarray(z)[start:start + 3]), prior
            # the same uniforms against p decoded on 3 rows instead of 6: equal but for a tie
            assert np.mean(np.asarray(xs) == np.asarray(x)[start:start + 3]) > 0.99, prior
    print("OK")
""")


def test_dvae_on_two_devices_agrees_with_one(tmp_path):
    r = subprocess.run([sys.executable, "-c", with_device_flags(SCRIPT, 2), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK" in r.stdout


def test_too_many_devices_is_a_settings_error():
    import jax
    from gfnem_jax.experiments import dvae
    n = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"devices {n} is more than .*xla_force_host_platform_device_count={n}"):
        dvae.DVAESettings(devices=n).validate()


# -- several processes (jax.distributed over loopback, gloo collectives on CPU) ------------------
ARGS = ["train", "dvae", "--codes", "3", "--grid", "2", "--steps", "4", "--e-steps", "2",
        "--m-steps", "2", "--batch-size", "8", "--channels", "4", "--embed-dim", "4", "--hidden",
        "16", "--n-test", "6", "--log-every", "2", "--sleep-prob", "0.5", "--checkpoint-every",
        "2", "--quiet"]


def _env(devices):
    return dict(os.environ, GFNEM_NO_COMPILE_CACHE="1", JAX_PLATFORMS="cpu",
                XLA_FLAGS=device_flags(devices))


def _cli(args):
    return [sys.executable, "-m", "gfnem_jax.cli"] + args


def _rows(out):
    return [{k: v for k, v in json.loads(l).items() if k != "wall_s"}
            for l in open(os.path.join(out, "metrics.jsonl"))]


def _leaves(out):
    """The final checkpoint's arrays, read back in this (single-device) process."""
    import jax
    from gfnem_jax.experiments import dvae
    return [np.asarray(x) for x in jax.tree.leaves(dvae.load_run(str(out))[2])]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gflownet", "vqvae"])
def test_two_processes_equal_one_process_of_two_devices(tmp_path, method):
    from gfnem_jax.experiments import dvae
    args = ARGS + ["--method", method]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(_cli(args + ["--out", str(tmp_path / "multi"), "--num-processes", "2",
                                           "--process-id", str(i), "--coordinator",
                                           f"127.0.0.1:{port}"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(1)) for i in range(2)]
    res = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for rc, _, err in res:
        assert rc == 0, err[-3000:]
    one = subprocess.run(_cli(args + ["--out", str(tmp_path / "one"), "--devices", "2"]),
                         capture_output=True, text=True, env=_env(2))
    assert one.returncode == 0, one.stderr[-3000:]
    multi, single = _rows(tmp_path / "multi"), _rows(tmp_path / "one")
    assert [r["step"] for r in multi] == [2, 4]
    assert json.load(open(tmp_path / "multi" / "config.json"))["devices"] == 2  # all devices
    for a, b in zip(multi, single):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    for a, b in zip(_leaves(tmp_path / "multi"), _leaves(tmp_path / "one")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("summary.json", "reconstructions.png", "prior_samples.png"):
        assert (tmp_path / "multi" / name).is_file(), name
    # both processes print the same final row (replicated state)
    last = [json.loads(r[1].strip().splitlines()[-1]) for r in res]
    strip = lambda x: {k: v for k, v in x.items() if k != "wall_s"}  # noqa: E731
    assert strip(last[0]) == strip(last[1])
    # a run trained on 2 devices evaluates in this 1-device process
    e = dvae.evaluate_run(str(tmp_path / "multi"), is_samples=3)
    assert np.isfinite(e["nll"])
