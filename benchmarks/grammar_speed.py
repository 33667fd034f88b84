"""GFlowNet-EM for grammars, speed on this machine: E-step and M-step sentences/s.

Batch of 32 synthetic sentences with PTB-like lengths (median 14, max 20; vocabulary 10,000),
NT = 30 nonterminals, PT = 60 preterminals.

E-step (one GFlowNet update, through the library's ``GFlowNet`` with the ``grammar.rollout.Buckets``
engine and forward-looking flows, as ``gfnem train grammar --method gflownet`` builds it): the
bucketed sampling rollout (``GFlowNet.rollout``, P_F on K(t) = L - t0 root slots) + the
differentiable evaluation and SubTB(lambda = 1) with log Z(x) (``GFlowNet.traj_loss``) + its
backward pass + an Adam update, one jitted function ("two"); or the one-pass variant ("one",
``GFlowNet(one_pass=True).rollout_terms``: the rollout itself is differentiable, no second pass).
M-step: log p(x, z) of the sampled
trees under the neural PCFG (``grammar.neural``, embedding 256) + its gradient + Adam.
Compile time is timed separately; the steady state is the best of ``--repeats`` timings.
FLOPs come from XLA's cost analysis of the compiled step; the matmul peak is measured here
(float32 2048^3, best of 3). Padding waste = 1 - live root slots / processed root slots of the
evaluation pass (``grammar.rollout.padding_waste``).

    python benchmarks/grammar_speed.py            # small transformer, span policy, paper-size (6 x 512)
    python benchmarks/grammar_speed.py --quick    # small transformer and span policy only
    python benchmarks/grammar_speed.py --policies span paper --configs two:4 --repeats 2
                                                  # the span policy beside the paper's transformer

Rows: "small" = ``ParsePolicy.small`` (2 x 64), "paper" = ``ParsePolicy.paper`` (6 x 512, 4 heads),
"span" = ``grammar.span_policy.SpanPolicy.small`` (d = 64, no layers over the roots: each root
from its span's endpoint encodings and label, each candidate merge scored by a small MLP;
``gfnem train grammar --policy span``). GFLOP/sent is the analytic count per sentence (the
sentence encoder, once per trajectory, left out for every row).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnem_jax import objectives
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.grammar.env import ParseTree, make_cond
from gfnem_jax.grammar import rules as gm
from gfnem_jax.grammar import rollout as pb
from gfnem_jax.grammar.policy import ParsePolicy
from gfnem_jax.grammar.span_policy import SpanPolicy

HERE = os.path.dirname(os.path.abspath(__file__))
PAPER_E_STEP = 2.4  # sentences/s of the official code on this CPU (REFERENCES.md)


def _matmul_gflops():
    spec = importlib.util.spec_from_file_location("hg", os.path.join(HERE, "hypergrid_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.matmul_gflops(2048, 2048, 2048)


def ptb_like_lengths(batch: int, seed: int = 0, max_len: int = 20):
    """Lengths with median 14 and max 20 (a clipped normal, one sentence forced to max_len)."""
    rng = np.random.default_rng(seed)
    n = np.clip(np.round(rng.normal(14.0, 4.0, batch)), 2, max_len).astype(int)
    n[0] = max_len
    n = np.clip(n + int(14 - np.median(n)), 2, max_len)
    n[0] = max_len
    return n


def sentences(batch, vocab, max_len, seed=0):
    rng = np.random.default_rng(seed + 1)
    lengths = ptb_like_lengths(batch, seed, max_len)
    conds = [make_cond(rng.integers(0, vocab, n), max_len) for n in lengths]
    return jax.tree.map(lambda *a: jnp.stack(a), *conds), lengths


def _time(fn, args, repeats):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    t0 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    best = time.perf_counter() - t0  # the first call (compiled already) counts too
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return compile_s, best, flops, out


def bench_estep(policy, env, cond, n_buckets, repeats, mode="two", lam=1.0, pack=0,
                compact=False, per_state_offset=False):
    c0 = jax.tree.map(lambda a: a[0], cond)
    params = policy.init(jax.random.PRNGKey(0), env.observe(env.init(c0)), c0)
    tx = optax.adam(1e-4)
    opt = tx.init(params)
    g = gm.random_grammar(jax.random.PRNGKey(1), env.n_nt, 60, policy.vocab)
    gfn = GFlowNet(env, policy, objectives.subtb(lam=lam),
                   engine=pb.Buckets(n_buckets, pack, compact=compact),
                   flow_offset=env.partial_log_reward,
                   flow_offset_path=None if per_state_offset else env.partial_log_reward_path,
                   one_pass=mode == "one", compact=compact)
    B = cond["length"].shape[0]

    def one(p, key, cond):
        terms, traj = gfn.rollout_terms(p, key, B, env.log_reward, g, cond)
        return gfn.value(terms, traj), traj

    @jax.jit
    def step(params, opt, key, cond):
        if mode == "one":  # differentiable rollout: one policy pass per visited state
            (loss, traj), grads = jax.value_and_grad(one, has_aux=True)(params, key, cond)
        else:  # sampling pass, then the differentiable evaluation pass
            traj = gfn.rollout(params, key, B, env.log_reward, g, cond)
            loss, grads = jax.value_and_grad(lambda p: gfn.traj_loss(p, traj, g))(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss, traj.terminal

    return _time(step, (params, opt, jax.random.PRNGKey(2), cond), repeats)


def bench_mstep(env, cond, trees, repeats):
    from gfnem_jax.grammar.neural import NeuralGrammar
    model = NeuralGrammar(env.n_nt, 60, 10000, 256)
    params = model.init(jax.random.PRNGKey(3))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, trees, words):
        def nll(p):
            g = model.rule_log_probs(p)
            return -jnp.mean(jax.vmap(lambda w, t: gm.log_joint(g, w, t))(words, trees))
        loss, grads = jax.value_and_grad(nll)(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    return _time(step, (params, opt, trees, cond["tokens"]), repeats)


def analytic_gflop(policy, batch, max_len, n_buckets, mode, eval_slots=None):
    """Dense-layer FLOPs of one E-step (root transformer + heads; encoder and attention scores
    left out): sampling passes on sum_{t<T} K(t) slots, evaluation on slot_cost slots, backward
    = 2 x forward. XLA's cost analysis counts a scan body once, so it undercounts rollouts."""
    T = max_len - 1
    roll = sum(K * (min(t1, T) - t0) for t0, t1, K in pb.time_buckets(max_len, n_buckets) if t0 < T)
    if mode == "one":
        return batch * 3 * roll * policy.flops_per_slot() / 1e9
    ev = batch * pb.slot_cost(max_len, n_buckets) if eval_slots is None else eval_slots
    return (batch * roll + 3 * ev) * policy.flops_per_slot() / 1e9


def live_slots(lengths) -> int:
    """Root slots of the states with >= 2 roots (the ones a pass needs): sum_n (2 + ... + n)."""
    return sum(n * (n + 1) // 2 - 1 for n in map(int, lengths))


def live_gflop(policy, lengths, mode):
    """``analytic_gflop`` counting live root slots only (no padding at all): a sentence of n words
    has n - t roots at step t, the sampling passes see states with 2..n roots and the evaluation
    pass states with 1..n roots. Divided by the achieved GFLOP/s, this is the floor of an E-step's
    time on this machine for ANY packing of root slots (``zero_waste_sentences_per_s``)."""
    roll = live_slots(lengths)
    ev = roll + len(lengths)  # + the terminal state's one root
    passes = 3 * roll if mode == "one" else roll + 3 * ev
    return passes * policy.flops_per_slot() / 1e9


def save(args, lengths, peak, rows):
    res = dict(machine=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               load_average=os.getloadavg(), jax=jax.__version__, batch=args.batch,
               lengths=lengths.tolist(), matmul_peak_gflops=round(peak, 1),
               paper_estep_sentences_per_s=PAPER_E_STEP,
               loss="subtb(lam=1) + forward-looking flows", rows=rows)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--configs", nargs="+", default=["two:1", "two:20", "one:20"],
                    help="E-step variants MODE:N; MODE two = sampling pass + evaluation pass (N "
                         "time buckets), one = differentiable rollout (GFlowNet(one_pass=True) "
                         "with grammar.rollout.Buckets(N)), pack = the sampling pass on 4 time "
                         "buckets + grammar.rollout.evaluate_packed in chunks of N states (`gfnem train grammar "
                         "--pack N`; two:4 is its default)")
    ap.add_argument("--per-state-offset", action="store_true",
                    help="score the forward-looking flow state by state (every node of every "
                         "state) instead of once per node along the trajectory (the default)")
    ap.add_argument("--compact", action="store_true",
                    help="the rollout runs the policy only on sentences not yet parsed (`gfnem "
                         "train grammar --compact`; off by default there and here)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small transformer and span policy only")
    ap.add_argument("--policies", nargs="+", choices=("small", "span", "paper"), default=None,
                    help="rows to run (default: small span paper; --quick: small span; "
                         "--paper-only: paper)")
    ap.add_argument("--paper-only", action="store_true", help="paper-size policy only")
    ap.add_argument("--mstep-only", action="store_true",
                    help="only the M-step, on exact posterior samples of a random PCFG")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "grammar_speed_cpu.json"))
    args = ap.parse_args(argv)
    L, NT, V = 20, 30, 10000
    env = ParseTree(L, NT)
    cond, lengths = sentences(args.batch, V, L)
    peak = _matmul_gflops()
    print(f"devices: {jax.devices()}  cores: {os.cpu_count()}  matmul peak {peak:.1f} GFLOP/s")
    print(f"batch {args.batch}, lengths median {np.median(lengths):.0f} max {lengths.max()} "
          f"mean {lengths.mean():.1f}")
    if args.mstep_only:
        from gfnem_jax.grammar import inside
        g = gm.random_grammar(jax.random.PRNGKey(7), NT, 60, V)
        trees = inside.sample(g, jax.random.PRNGKey(8), cond["tokens"], cond["length"])
        comp, sec, flops, _ = bench_mstep(env, cond, trees, args.repeats)
        m = dict(part="M-step", model="neural PCFG NT30 PT60 V10000 dim256", compile_s=round(comp, 2),
                 step_s=round(sec, 4), sentences_per_s=round(args.batch / sec, 1),
                 gflop_per_step=round(flops / 1e9, 3), gflops=round(flops / sec / 1e9, 1))
        print(m)
        save(args, lengths, peak, [m])
        return
    make = {"small": lambda: ParsePolicy.small(L, NT, V), "span": lambda: SpanPolicy.small(L, NT, V),
            "paper": lambda: ParsePolicy.paper(L, NT, V)}
    names = args.policies or (["paper"] if args.paper_only else
                              ["small", "span"] + ([] if args.quick else ["paper"]))
    sizes = [(n, make[n]()) for n in names]
    rows, terminal = [], None
    hdr = ("| policy | E-step | buckets | padding waste | compile s | s/step | E-step sent/s | x paper | "
           "GFLOP/step | GFLOP/sent | GFLOP/s | % peak | sent/s at zero waste |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(hdr)
    for name, pol in sizes:
        for cfg in args.configs:
            mode, nb = cfg.split(":")
            nb, pack = int(nb), 0
            if mode == "pack":
                mode, nb, pack = "two", 4, nb
            comp, sec, flops, out = bench_estep(pol, env, cond, nb, args.repeats, mode, pack=pack,
                                                compact=args.compact,
                                                per_state_offset=args.per_state_offset)
            terminal = out[3]
            ev_slots = pb.packed_slot_cost(lengths, L, pack) if pack else None
            waste = (1 - live_slots(lengths) / ev_slots if pack
                     else pb.padding_waste(lengths, L, nb))
            r = dict(part="E-step", mode=mode, compact=args.compact,
                     per_state_offset=args.per_state_offset, policy=name, dim=pol.dim,
                     layers=pol.layers,
                     heads=pol.heads, n_buckets=nb, pack=pack, padding_waste=round(waste, 3),
                     compile_s=round(comp, 2), step_s=round(sec, 4),
                     sentences_per_s=round(args.batch / sec, 2),
                     speedup_vs_paper=round(args.batch / sec / PAPER_E_STEP, 2),
                     xla_cost_gflop_per_step=round(flops / 1e9, 2),
                     gflop_per_step=round(analytic_gflop(pol, args.batch, L, nb, mode, ev_slots), 3))
            r["gflop_per_sentence"] = round(
                analytic_gflop(pol, args.batch, L, nb, mode, ev_slots) / args.batch, 4)
            r["gflops"] = round(r["gflop_per_step"] / sec, 2)
            r["pct_peak"] = round(100 * r["gflops"] / peak, 2)
            r["live_gflop_per_step"] = round(live_gflop(pol, lengths, mode), 1)
            # the same FLOP rate on live slots only: what perfect packing would give
            r["zero_waste_sentences_per_s"] = round(
                args.batch * r["gflop_per_step"] / r["live_gflop_per_step"] / sec, 2)
            rows.append(r)
            save(args, lengths, peak, rows)
            print(f"| {name} | {cfg} | {nb} | {r['padding_waste']:.3f} | {comp:.1f} | {sec:.3f} | "
                  f"{r['sentences_per_s']:.2f} | {r['speedup_vs_paper']:.1f} | "
                  f"{r['gflop_per_step']:.1f} | {r['gflop_per_sentence']:.4f} | "
                  f"{r['gflops']:.1f} | {r['pct_peak']:.1f} | "
                  f"{r['zero_waste_sentences_per_s']:.2f} |", flush=True)
        if name != "small":
            continue
        print(f"load average {os.getloadavg()}")
        try:  # the M-step, on the small policy's sampled trees
            comp, sec, flops, _ = bench_mstep(env, cond, jax.vmap(env.tree)(terminal), args.repeats)
            m = dict(part="M-step", model="neural PCFG NT30 PT60 V10000 dim256",
                     compile_s=round(comp, 2), step_s=round(sec, 4),
                     sentences_per_s=round(args.batch / sec, 1),
                     gflop_per_step=round(flops / 1e9, 3), gflops=round(flops / sec / 1e9, 1))
            rows.append(m)
            save(args, lengths, peak, rows)
            print(f"M-step (neural PCFG log p(x, z) + grad + Adam): compile {comp:.1f} s, "
                  f"{sec * 1e3:.1f} ms/step, {m['sentences_per_s']} sentences/s, {m['gflops']} GFLOP/s")
            print(hdr)
        except ImportError as e:
            print(f"M-step skipped: {e}")
    save(args, lengths, peak, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
