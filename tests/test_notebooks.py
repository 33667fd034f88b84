"""Every notebook under notebooks/ runs top to bottom, and each asserts its key numbers.

With nbclient (the test extra) each notebook is executed in a fresh Jupyter kernel, as a reader
would run it; without it, its code cells are executed in this process (same code, same asserts).
Figures go to the Agg backend. A notebook without an ``assert`` in a code cell fails: every
notebook must check the numbers it shows.
"""
import glob
import json
import os

import pytest
from _o2 import o2_env

NB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NB_DIR, "*.ipynb")))
# notebooks whose cost is running rather than compiling (measured): their kernels get XLA's
# default optimisation; the others compile at the test-wide level 0 (tests/conftest.py)
RUN_BOUND = {"energy_based.ipynb", "mixture_em.ipynb", "quickstart.ipynb"}
TIMEOUT_S = 600  # per cell; the notebooks take 1-2 minutes on a 2-core CPU


def _code(nb):
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "divergences.ipynb", "mixture_em.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_and_checks_its_numbers(path, monkeypatch):
    with open(path) as f:
        nb = json.load(f)
    assert any("assert " in src for src in _code(nb)), f"{path} asserts none of its numbers"
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if os.path.basename(path) in RUN_BOUND:  # the kernel at XLA's default optimisation
        monkeypatch.setenv("XLA_FLAGS", o2_env()["XLA_FLAGS"])
    try:
        import nbclient
        import nbformat
    except ImportError:
        nbclient = None
    if nbclient is not None:
        node = nbformat.reads(json.dumps(nb), as_version=4)
        client = nbclient.NotebookClient(node, timeout=TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": NB_DIR}})
        client.execute()  # raises CellExecutionError (with the cell and traceback) on failure
        return
    import matplotlib
    matplotlib.use("Agg")
    code = "\n".join(_code(nb))
    exec(compile(code, path, "exec"), {"__name__": "__notebook__"})
