"""A NaN or Inf in a loss, a reward or a gradient stops every run kind (issue 12, item 3).

The fault is injected for real: every optimizer of the run (``optax.adam`` / ``optax.sgd``, as
each run kind builds them) is replaced by one that returns NaN updates on its ``POISON``-th
update, so the parameters it moves (a policy, log Z, a grammar, a decoder, an energy) turn NaN
mid-run; the rewards and losses computed from them follow. The run must then stop with exit
status 1 and one line naming the step, write no metrics row at or after that step, keep the last
good checkpoint (finite, restorable) and write no later one. Exactness of the step detection
itself: a gradient that is NaN while the loss is finite is caught at its own step
(``test_nan_gradient_is_caught_at_its_step``).
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gfnem_jax import checkpoint, cli, loop

POISON = 7  # the optimizer update (0-based) that returns NaN

T = ["--quiet", "--checkpoint-every", "4", "--log-every", "2"]
KINDS = {
    "hypergrid": ["hypergrid", "--ndim", "2", "--height", "4", "--steps", "40", "--batch-size", "8",
                  "--hidden", "16"],
    "sets": ["sets", "--steps", "40", "--batch-size", "8", "--hidden", "16"],
    "sequences": ["sequences", "--steps", "40", "--batch-size", "8", "--hidden", "16"],
    "mixture": ["mixture", "--n-data", "64", "--steps", "40", "--e-steps", "2", "--em-iters", "2",
                "--batch-size", "16", "--hidden", "16", "--no-plot"],
    "dvae-vqvae": ["dvae", "--method", "vqvae", "--codes", "3", "--grid", "2", "--steps", "40",
                   "--batch-size", "8", "--channels", "4", "--n-test", "16", "--no-plot"],
    "ebm": ["ebm", "--bits", "3", "--steps", "40", "--batch-size", "8", "--n-train", "200",
            "--n-test", "50", "--energy-hidden", "16", "--gfn-hidden", "16", "--n-eval-samples",
            "100"],
}
SLOW = {  # the same check, the costlier compilations (CI runs the rest; -m slow runs these)
    "grammar-marginal": ["grammar", "--steps", "40", "--batch-size", "8", "--nt", "3", "--pt", "4",
                         "--dim", "16", "--max-len", "6", "--synth-train", "40", "--synth-valid",
                         "10", "--synth-nt", "2", "--synth-pt", "3", "--synth-vocab", "8"],
    "dvae-gflownet": ["dvae", "--codes", "3", "--grid", "2", "--steps", "40", "--e-steps", "2",
                      "--m-steps", "2", "--batch-size", "8", "--channels", "4", "--hidden", "16",
                      "--n-test", "16", "--no-plot"],
    "grammar-gflownet": ["grammar", "--method", "gflownet", "--steps", "40", "--batch-size", "8",
                         "--policy-layers", "1", "--policy-dim", "32", "--policy-heads", "2",
                         "--policy-enc-layers", "1", "--nt", "3", "--pt", "4", "--dim", "16",
                         "--max-len", "6", "--synth-train", "40", "--synth-valid", "10",
                         "--synth-nt", "2", "--synth-pt", "3", "--synth-vocab", "8",
                         "--threshold-start", "100", "--eval-samples", "2"],
}


def _poisoned(factory):
    """``factory(...)`` whose update number POISON (0-based) returns NaN updates."""
    def make(*a, **k):
        inner = factory(*a, **k)

        def init(params):
            return (jnp.zeros((), jnp.int32), inner.init(params))

        def update(g, state, params=None):
            count, s = state
            u, s = inner.update(g, s, params)
            u = jax.tree.map(lambda x: jnp.where(count == POISON, jnp.nan, x), u)
            return u, (count + 1, s)

        return optax.GradientTransformation(init, update)
    return make


def _run_poisoned(argv, out, monkeypatch, capsys):
    monkeypatch.setattr(optax, "adam", _poisoned(optax.adam))
    monkeypatch.setattr(optax, "sgd", _poisoned(optax.sgd))
    with pytest.raises(SystemExit) as e:
        cli.main(["train"] + argv + T + ["--out", out])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"gfnem: stopped: (non-finite|NaN) ", err[0]), err
    return err[0]


def _check_stopped(line, out):
    m = re.search(r" at step (\d+)| after step (\d+)", line)
    assert m, line
    bad = int(m.group(1) or m.group(2))
    assert bad <= 40
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    for r in rows:  # every logged row precedes the bad step and is finite
        assert r["step"] < bad or (m.group(2) and r["step"] == bad), (r, line)
    kept = re.search(r"last good checkpoint \(step (\d+)\) is kept", line)
    steps = checkpoint.steps(out) if os.path.isdir(os.path.join(out, "checkpoint")) else []
    if kept is None:
        assert "no checkpoint had been written yet" in line and steps == []
        return
    good = int(kept.group(1))
    assert good < bad and steps and max(steps) == good, (steps, line)
    st = checkpoint.restore(checkpoint.latest(out))
    assert bool(loop.tree_finite(st)), "the kept checkpoint holds a NaN"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(kind, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    line = _run_poisoned(KINDS[kind], out, monkeypatch, capsys)
    _check_stopped(line, out)
    assert not os.path.exists(os.path.join(out, "summary.json"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SLOW))
def test_nan_stops_the_run_slow_kinds(kind, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _check_stopped(_run_poisoned(SLOW[kind], out, monkeypatch, capsys), out)


def test_nan_gradient_is_caught_at_its_step():
    """q(w) = w + 0 * sqrt(|w|): the loss is finite everywhere, its gradient 1 except at w = 0,
    where it is NaN. SGD at lr 1 from w = 3 reaches w = 0 at step 3 (0-based): that step's loss
    reads NaN, the steps before are finite."""
    upd = loop.Update(lambda p, o, b, k, s: None,
                      lambda p, o, a: (p["w"] + 0.0 * jnp.sqrt(jnp.abs(p["w"])))[None],
                      lambda q, a: (jnp.mean(q), {}), optax.sgd(1.0))
    st = loop.init_state({"w": jnp.asarray(3.0)}, optax.sgd(1.0), key=jax.random.PRNGKey(0))
    step = jax.jit(loop.make_step(upd))
    losses = []
    for t in range(4):
        st, m = step(st, None, jax.random.PRNGKey(t))
        losses.append(float(m["loss"]))
    assert losses[:3] == [3.0, 2.0, 1.0] and np.isnan(losses[3]), losses
    assert bool(loop.tree_finite({"a": jnp.ones(2), "k": jnp.arange(3)}))
    assert not bool(loop.tree_finite({"a": jnp.array([1.0, jnp.inf])}))
