"""Sphinx configuration: the API reference is generated from the docstrings (autodoc + napoleon).

Build with ``bash docs/build.sh`` (``python -m sphinx -W --keep-going -b html docs docs/_build``):
warnings are errors. ``api/`` is regenerated at every build from the modules of ``gfnem_jax``
(one page per module), so a new module appears in the reference without editing anything here.
"""
import os
import pkgutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

project = "gfnem_jax"
author = "gfnem_jax developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
# napoleon turns Google-style sections (Args:, Returns:) into fields; the docstrings of this
# project are plain text first, so _plain_docstring (below) then shows each one verbatim.
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Modules whose import needs an optional dependency, or that are command-line entry points only.
SKIP_MODULES = {"gfnem_jax.cli"}
# ambiguous short names in signatures and docstrings (jax.Array, flax modules...) are not errors
nitpicky = False
suppress_warnings = ["autodoc.import_object"] if os.environ.get("GFNEM_DOCS_LENIENT") else []


def _modules():
    import gfnem_jax
    names = ["gfnem_jax"]
    for m in pkgutil.walk_packages(gfnem_jax.__path__, "gfnem_jax."):
        if m.name not in SKIP_MODULES and not m.name.split(".")[-1].startswith("_"):
            names.append(m.name)
    return sorted(names)


def _write_api(app):
    api = os.path.join(HERE, "api")
    os.makedirs(api, exist_ok=True)
    mods = _modules()
    for name in mods:
        text = f"{name}\n{'=' * len(name)}\n\n.. automodule:: {name}\n"
        path = os.path.join(api, name + ".rst")
        if not os.path.isfile(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
    for old in os.listdir(api):
        if old.endswith(".rst") and old[:-4] not in mods and old != "index.rst":
            os.remove(os.path.join(api, old))
    index = ("API reference\n=============\n\nGenerated from the docstrings, one page per module.\n\n"
             ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   {m}\n" for m in mods))
    path = os.path.join(api, "index.rst")
    if not os.path.isfile(path) or open(path).read() != index:
        with open(path, "w") as f:
            f.write(index)


_RST_SPECIAL = "\\*`|_[]<>:"


def _escape(text: str) -> str:
    return "".join("\\" + c if c in _RST_SPECIAL else c for c in text)


def _plain_docstring(app, what, name, obj, options, lines):
    """Docstrings here are written as plain text (ASCII formulas, aligned lists), not reST: keep
    the summary line as a paragraph and the rest verbatim in a literal block, so that any
    docstring renders as written and none can break the build (runs after napoleon)."""
    if not lines:
        return
    text = [l.rstrip() for l in lines]
    while text and not text[-1]:
        text.pop()
    first_blank = next((i for i, l in enumerate(text) if not l.strip()), len(text))
    summary, body = text[:first_blank], text[first_blank:]
    while body and not body[0].strip():
        body.pop(0)
    out = [_escape(" ".join(l.strip() for l in summary)), ""]
    if body:
        out += ["::", ""] + ["    " + l for l in body] + [""]
    lines[:] = out


def setup(app):
    app.connect("builder-inited", _write_api)
    app.connect("autodoc-process-docstring", _plain_docstring, priority=900)
