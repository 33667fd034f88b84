"""Data-parallel scaling of plain HyperGrid training: 1, 2, 4 devices in one process and 2
processes x 2 devices (``jax.distributed`` over loopback), weak and strong scaling.

Weak scaling keeps the batch per device fixed (``--per-device``), so the global batch grows with
the devices; strong scaling keeps the global batch fixed (``--global-batch``). Each configuration is
one ``gfnem train hypergrid`` run (in subprocesses, so each gets its own device count); steps/s is
measured between the first and the last logged row (compilation excluded), samples/s = steps/s x
global batch. On CPU the "devices" are XLA host devices sharing the machine's cores, so this shows
the overhead of the sharded step and its collectives more than a speed-up; on a GPU machine use
real devices. Writes a table and JSON.

    python benchmarks/scaling.py [--steps 300] [--ndim 2] [--per-device 32] [--global-batch 128]
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _env(devices):
    env = dict(os.environ, GFNEM_NO_COMPILE_CACHE="1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _rate(out, steps_per_row):
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    (a, b) = rows[0], rows[-1]
    return (b["step"] - a["step"]) / max(b["wall_s"] - a["wall_s"], 1e-9)


def run(args, devices_per_proc, procs, batch, work, tag):
    out = os.path.join(work, tag)
    base = [sys.executable, "-m", "gfnem_jax.cli", "train", "hypergrid", "--ndim", str(args.ndim), "--height",
            "8", "--loss", "tb", "--steps", str(args.steps), "--log-every", str(args.steps // 6),
            "--batch-size", str(batch), "--quiet", "--out", out,
            "--devices", str(devices_per_proc * procs), "--checkpoint-minutes", "0"]
    if procs == 1:
        r = subprocess.run(base, capture_output=True, text=True, env=_env(devices_per_proc))
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ps = [subprocess.Popen(base + ["--num-processes", str(procs), "--process-id", str(i),
                                       "--coordinator", f"127.0.0.1:{port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(devices_per_proc)) for i in range(procs)]
        for p in ps:
            if p.wait():
                raise RuntimeError(p.stderr.read()[-2000:])
    sps = _rate(out, args.steps // 6)
    return {"config": tag, "processes": procs, "devices": devices_per_proc * procs,
            "global_batch": batch, "steps_per_s": round(sps, 2), "samples_per_s": round(sps * batch, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ndim", type=int, default=2)
    ap.add_argument("--per-device", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scaling_cpu.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="gfnem_scaling_")
    layouts = [(1, 1), (2, 1), (4, 1), (2, 2)]  # (devices per process, processes)
    rows = []
    for mode in ("weak", "strong"):
        for dpp, procs in layouts:
            n = dpp * procs
            batch = a.per_device * n if mode == "weak" else a.global_batch
            tag = f"{mode}_{procs}p_x_{dpp}d"
            r = run(a, dpp, procs, batch, work, tag)
            r["mode"] = mode
            rows.append(r)
            print(f"{mode:7s} {procs} proc x {dpp} dev  batch {batch:5d}  {r['steps_per_s']:9.2f} steps/s"
                  f"  {r['samples_per_s']:10.1f} samples/s", flush=True)
    res = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "steps": a.steps,
           "task": f"hypergrid {a.ndim}D H=8, TB, MLP 2x256", "rows": rows,
           "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
