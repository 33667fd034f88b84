"""The documentation builds with Sphinx, warnings as errors (API reference from the docstrings).

Skipped when Sphinx is not installed (it is in the ``test`` extra). Builds into a temporary
directory so the working tree only gains the generated ``docs/api/*.rst`` sources.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[test]')")
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), DOCS, str(tmp_path / "html")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    html = tmp_path / "html"
    for page in ("index.html", "concepts.html", "experiments/hypergrid.html",
                 "experiments/divergences.html", "experiments/mixture_em.html", "api/index.html",
                 "api/gfnem_jax.losses.divergences.html"):
        assert (html / page).is_file(), page
    api = (html / "api" / "gfnem_jax.losses.divergences.html").read_text()
    assert "reverse_kl" in api and "Rényi" in api      # docstrings made it into the reference
