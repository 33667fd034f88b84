"""Does plain gfn's sampler keep up with the energy? Exact traces of one EB-GFN run.

Trains ``gfnem train ebm`` (``gfnem_jax.ebgfn``, the same data, seeds and steps as the CLI with
--n-train / --n-test) and every ``--every`` steps records
  nll     exact held-out NLL (log Z by enumeration), nats; the uniform model's is d log 2;
  tv      TV(P_F's terminal distribution, p_phi): exact (DP over 3^d states) for d <= 10,
          else the one-path importance-sampling estimate ("tv_is", biased upward);
  kl_pq   KL(p_phi || P_F) (d <= 10): the model's mass the sampler misses;
  max_p   the largest probability p_phi gives one state (spurious modes show as jumps);
          max_p_data: the fraction of training points at that state (0: a mode off the data);
  gap     (d > 10) E_{P_F}[E] - E_{p_phi}[E]: 2,048 sampler draws against the exact model
          expectation; > 0 when the sampler sits above the model's energy (lags it);
  eloss   the mean contrastive loss of the chunk.
One JSON line per run on stdout.

    python benchmarks/ebm_gfn_lag.py --bits 4 --method gfn --gfn-updates 1 --steps 2000 --every 200
    python benchmarks/ebm_gfn_lag.py --bits 8 --method gfn --gfn-updates 4 --steps 5000 --every 500
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import ebgfn
from gfnem_jax.data import toy2d
from gfnem_jax.experiments import ebm, ebm_eval
from gfnem_jax.models import energy as em


def trace(s: ebm.EBMSettings, steps: int, every: int, n_train: int, n_test: int, seed: int = 0):
    d = 2 * s.bits
    e = ebgfn.make(s, d)
    rc = ebgfn.make_chunk(e, every)
    rng = np.random.default_rng([seed, 0])  # as ebm.load_data: train, then test
    r = toy2d.resolve_range(s.grid_range, s.data)
    train = jnp.asarray(toy2d.make_data(s.data, s.bits, n_train, rng, r), jnp.float32)
    test = toy2d.make_data(s.data, s.bits, n_test, rng, r)
    st, rows, t0 = ebgfn.init_state(e, seed), [], time.time()
    for i in range(steps // every):
        st, m = rc(st, train)
        r = {"step": (i + 1) * every, "nll": round(float(em.exact_nll(e.model, st.model, test)), 3)}
        lp = em.log_probs(e.model, st.model)
        p = jnp.exp(lp - jax.nn.logsumexp(lp))
        r["max_p"] = round(float(p.max()), 4)
        top = np.asarray([int(b) for b in np.binary_repr(int(jnp.argmax(p)), d)], np.float32)
        r["max_p_data"] = round(float(np.mean(np.all(np.asarray(train) == top, axis=1))), 5)
        if e.gfn_based and d <= 10:
            q = ebm_eval.exact_sampler_probs(e.env, e.policy, st.sampler)
            r["tv"] = round(float(0.5 * jnp.sum(jnp.abs(q - p))), 3)
            r["kl_pq"] = round(float(jnp.sum(p * (jnp.log(p + 1e-30) - jnp.log(q + 1e-30)))), 3)
        elif e.gfn_based:
            r["tv_is"] = round(ebm_eval.sampler_tv(e, st.sampler, st.model, jax.random.PRNGKey(7))[0], 3)
            xq = jnp.asarray(ebm_eval.sample_gfn(e, st.sampler, st.model, jax.random.PRNGKey(8), 2048),
                             jnp.float32)
            ep = float(jnp.sum(p * em.all_energies(e.model, st.model)))
            r["gap"] = round(float(jnp.mean(em.energies(e.model, st.model, xq))) - ep, 3)
        r["eloss"] = round(float(np.mean(m["m_loss"])), 3)
        if "log_z" in m:
            r["log_z"] = round(float(np.mean(m["log_z"])), 2)
        rows.append(r)
        print(json.dumps(r), flush=True, file=__import__("sys").stderr)
    return {"method": s.method, "gfn_updates": ebgfn.sampler_updates(s), "lr": s.lr, "d": d,
            "settings": {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str))},
            "data": s.data, "uniform": round(d * np.log(2), 3), "wall_s": round(time.time() - t0, 1),
            "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--data", default="8gaussians")
    ap.add_argument("--method", default="gfn", choices=ebm.METHODS)
    ap.add_argument("--gfn-updates", type=int, default=0, help="0: the run kind's default")
    ap.add_argument("--lr", type=float, default=1e-3, help="the energy's Adam learning rate")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="any other setting of gfnem train ebm (ebm.EBMSettings), e.g. lr_logz=1")
    a = ap.parse_args(argv)
    extra = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        kind = type(getattr(ebm.EBMSettings(), k))
        extra[k] = kind(v)
    s = ebm.EBMSettings(method=a.method, bits=a.bits, data=a.data, gfn_updates=a.gfn_updates,
                        lr=a.lr, seed=a.seed, **extra)
    s.validate()
    print(json.dumps(trace(s, a.steps, a.every, a.n_train, a.n_test, a.seed)), flush=True)


if __name__ == "__main__":
    main()
