"""Peak resident memory of one HyperGrid training run (``runner.run``), as a user's process sees it.

    python benchmarks/peak_rss.py NDIM BATCH      # e.g. 2 16: prints the process's ru_maxrss in MiB

200 steps, H = 8, 3x256 MLPs, no persistent compilation cache (so the chunk is compiled here).
"""
import os
import resource
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["GFNEM_NO_COMPILE_CACHE"] = "1"

from gfnem_jax.experiments import runner  # noqa: E402

ndim, batch = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (2, 16)
cfg = dict(task="hypergrid", env=dict(ndim=ndim, height=8, r0=0.001), steps=200, batch_size=batch,
           hidden=256, n_layers=3, log_every=100)
with tempfile.TemporaryDirectory() as out:
    runner.run(cfg, out, progress=False)
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
      f"(hypergrid {ndim}-D H=8, batch {batch}, 200 steps)")
