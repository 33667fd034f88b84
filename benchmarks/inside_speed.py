"""Inside + backward speed: gfnem_jax.inside against torch-struct 0.5 (run in its own venv).

Batch of 32 PTB-like lengths (median 14, max 20), NT 30, PT 60, V 10000, a random grammar given
as log-prob tables; one "iteration" = log p(x) of the batch and its gradient with respect to the
tables (the exact-EM / marginalisation E-step). Reports sentences/s of each, the ratio, compile
time separately, achieved GFLOP/s of our algorithm (analytic count of the matmul work, backward
counted as 2x forward) against a measured float32 matmul peak, and the time of a full evaluation
(exact NLL + Viterbi span F1) of 1,300 sentences.

    python benchmarks/inside_speed.py [--reps 10] [--no-torch]
torch-struct lives in ~/.cache/gfnem_jax/side/torchstruct (python3.11 -m venv; pip install
torch==2.13.0 torch-struct==0.5); it is created on first use. Writes
benchmarks/results/inside_speed_cpu.json and prints a table.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIDE = os.path.expanduser("~/.cache/gfnem_jax/side/torchstruct")
TORCH_SCRIPT = r"""
import json, sys, time, torch, torch_struct
torch.set_num_threads(int(sys.argv[2]))
cfg = json.loads(sys.argv[1])
B, N, NT, PT = len(cfg["lengths"]), max(cfg["lengths"]), cfg["nt"], cfg["pt"]
g = torch.Generator().manual_seed(0)
S = NT + PT
terms = torch.randn(B, N, PT, generator=g).log_softmax(-1).requires_grad_()
rules = torch.randn(B, NT, S * S, generator=g).log_softmax(-1).view(B, NT, S, S).requires_grad_()
roots = torch.randn(B, NT, generator=g).log_softmax(-1).requires_grad_()
lengths = torch.tensor(cfg["lengths"])
def it():
    dist = torch_struct.SentCFG((terms, rules, roots), lengths=lengths)
    dist.partition.sum().backward()
t = time.perf_counter(); it(); first = time.perf_counter() - t
ts = []
for _ in range(cfg["reps"]):
    t = time.perf_counter(); it(); ts.append(time.perf_counter() - t)
print(json.dumps({"first_s": first, "times": ts, "torch": torch.__version__}))
"""


def ensure_side():
    py = os.path.join(SIDE, "bin", "python")
    ok = os.path.exists(py) and subprocess.run([py, "-c", "import torch_struct"],
                                               capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["python3.11", "-m", "venv", SIDE], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0", "torch-struct==0.5"], check=True)
    return py


def ptb_like_lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    L = np.clip(np.round(rng.normal(14, 4, size=n)), 2, 20).astype(np.int32)
    L[0] = 20
    return L


def flops(lengths, N, nt, pt):
    """Analytic multiply-add count (x2) of one forward pass as implemented (padded shapes)."""
    B = len(lengths)
    leaf = B * N * (2 * pt * nt * nt * 2 + 2 * pt * pt * nt + 2 * pt * nt)
    per_w = B * N * (2 * N * nt * nt + 2 * nt ** 3 + 4 * nt * nt)
    return leaf + (N - 2) * per_w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--torch-reps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--eval-sentences", type=int, default=1300)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "inside_speed_cpu.json"))
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    from gfnem_jax.grammar import inside, metrics as parse_metrics
    from gfnem_jax.grammar import rules as G
    NT, PT, V, B = 30, 60, 10000, 32
    lengths = ptb_like_lengths(B)
    N = int(lengths.max())
    g = G.random_grammar(jax.random.PRNGKey(0), NT, PT, V)
    words = jax.random.randint(jax.random.PRNGKey(1), (B, N), 0, V)
    L = jnp.asarray(lengths)
    f = jax.jit(jax.value_and_grad(lambda gg, w, l: jnp.sum(inside.log_marginal(gg, w, l))))
    t = time.perf_counter(); jax.block_until_ready(f(g, words, L)); first = time.perf_counter() - t
    ts = []
    for _ in range(a.reps):
        t = time.perf_counter(); jax.block_until_ready(f(g, words, L)); ts.append(time.perf_counter() - t)
    ours = float(np.median(ts))
    # matmul peak
    x = jnp.ones((1024, 1024), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(x))
    mts = []
    for _ in range(10):
        t = time.perf_counter(); jax.block_until_ready(mm(x)); mts.append(time.perf_counter() - t)
    peak = 2 * 1024 ** 3 / np.min(mts) / 1e9
    gflop = 3 * flops(lengths, N, NT, PT) / 1e9  # forward + backward (~2x forward)
    res = {"batch": B, "nt": NT, "pt": PT, "vocab": V, "lengths": lengths.tolist(),
           "median_length": float(np.median(lengths)), "jax": jax.__version__,
           "ours_s_per_batch": ours, "ours_sent_per_s": B / ours, "ours_compile_s": first - ours,
           "ours_gflop_per_batch": gflop, "ours_gflops": gflop / ours, "matmul_peak_gflops_1024": peak,
           "threads": a.threads}
    if not a.no_torch:
        py = ensure_side()
        cfg = json.dumps({"lengths": lengths.tolist(), "nt": NT, "pt": PT, "reps": a.torch_reps})
        r = subprocess.run([py, "-c", TORCH_SCRIPT, cfg, str(a.threads)], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-2000:], file=sys.stderr)
        else:
            tr = json.loads(r.stdout.strip().splitlines()[-1])
            ts_t = float(np.median(tr["times"]))
            res.update(torch_struct_s_per_batch=ts_t, torch_struct_sent_per_s=B / ts_t,
                       torch_struct_first_s=tr["first_s"], torch_version=tr["torch"],
                       speedup=ts_t / ours)
    # full evaluation: exact NLL + Viterbi F1 of 1,300 sentences, batches of 64
    n_ev, EB = a.eval_sentences, 64
    ev_len = ptb_like_lengths(n_ev, seed=1)
    ev_words = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (n_ev, 20), 0, V))

    @jax.jit
    def ev(gg, w, l):
        return inside.log_marginal(gg, w, l), inside.viterbi(gg, w, l)[0]

    pad = (-n_ev) % EB
    W = np.concatenate([ev_words, ev_words[:pad]]); Lp = np.concatenate([ev_len, ev_len[:pad]])
    t = time.perf_counter(); jax.block_until_ready(ev(g, W[:EB], Lp[:EB])); ev_compile = time.perf_counter() - t
    t = time.perf_counter()
    logp, spans = [], []
    for lo in range(0, len(Lp), EB):
        lp, tree = ev(g, W[lo:lo + EB], Lp[lo:lo + EB])
        logp.append(np.asarray(lp)); spans += parse_metrics.tree_spans_batch(jax.device_get(tree))
    logp = np.concatenate(logp)[:n_ev]; spans = spans[:n_ev]
    nll = parse_metrics.nll_per_token(logp, ev_len)
    f1 = parse_metrics.span_f1(spans, [parse_metrics.right_branching(int(n)) for n in ev_len], ev_len)
    ev_s = time.perf_counter() - t
    res.update(eval_sentences=n_ev, eval_s=ev_s, eval_compile_s=ev_compile, eval_nll=nll, eval_f1_vs_right_branching=f1)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(res, open(a.out, "w"), indent=2)
    print(f"{'':28s}{'s/batch':>10s}{'sent/s':>10s}{'compile s':>11s}")
    print(f"{'gfnem_jax.inside':28s}{ours:10.4f}{B / ours:10.1f}{first - ours:11.2f}")
    if "torch_struct_s_per_batch" in res:
        print(f"{'torch-struct 0.5':28s}{res['torch_struct_s_per_batch']:10.4f}{res['torch_struct_sent_per_s']:10.1f}{'-':>11s}")
        print(f"speedup: {res['speedup']:.1f}x")
    print(f"achieved {res['ours_gflops']:.1f} GFLOP/s vs matmul peak {peak:.1f} GFLOP/s (1024^2)")
    print(f"full evaluation of {n_ev} sentences (NLL + Viterbi F1): {ev_s:.1f} s (+ {ev_compile:.1f} s compile)")


if __name__ == "__main__":
    main()
