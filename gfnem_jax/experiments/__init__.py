"""The run kinds, registered once: ``gfnem train KIND`` for each entry of ``KINDS``.

A run kind is a module declaring (see ``gfnem_jax.driver`` and ``docs/adding.rst``):

  NAME, HELP                       its name and one line of help
  Settings                         its settings (a ``config.Settings`` dataclass inheriting
                                   ``run_dir.CheckpointSettings``): flags, validation, config.json
                                   (``to_config`` / ``from_config``)
  build(settings) -> Experiment    what the driver runs
  owns(config) -> bool             (optional) whether a saved config.json is a run of this kind
  sample(run, n, seed, progress, out=None)
                                   (optional) ``gfnem sample``: n terminal states, an int array,
                                   written chunk by chunk into ``out(shape, dtype)`` when given
  sample_row(config)               (optional) the row shape and dtype of those samples, for the
                                   disk check before sampling
  memory_estimate(settings)        (optional) a lower bound of a run's memory, checked against
                                   the machine's before any work (``gfnem_jax.sizes``)
  EVAL                             (optional) a ``Command`` for ``gfnem eval KIND``
  COMMANDS                         (optional) more top-level ``Command``s (``gfnem parse``, ...)

Everything the CLI offers (flags, help, which commands apply to which kind) is derived from these
declarations; adding a run kind is one module and one line here.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

KINDS = {  # name -> module; the order of `gfnem train --help`
    "hypergrid": "gfnem_jax.experiments.hypergrid",
    "sets": "gfnem_jax.experiments.sets",
    "sequences": "gfnem_jax.experiments.sequences",
    "mixture": "gfnem_jax.experiments.mixture",
    "grammar": "gfnem_jax.experiments.grammar",
    "dvae": "gfnem_jax.experiments.dvae",
    "ebm": "gfnem_jax.experiments.ebm",
    "dag": "gfnem_jax.experiments.dag",
}


class Command(NamedTuple):
    """A command a run kind adds to the CLI: ``add_args(parser)`` declares its arguments (the CLI
    owns flags), ``main(args) -> None`` runs it (ValueError naming what is wrong; the CLI turns
    setting names into flags with ``settings`` and exits 2)."""

    name: str
    help: str
    add_args: Callable[[Any], None]
    main: Callable[[Any], Any]
    settings: tuple = ()


def kind(name: str):
    """The module of run kind ``name``; ValueError naming the allowed kinds."""
    if name not in KINDS:
        raise ValueError(f"unknown run kind {name!r}; allowed: {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name])


def settings_of(name: str, cfg: Dict[str, Any]):
    """The validated settings of a saved config of kind ``name``."""
    mod = kind(name)
    s = mod.Settings.from_config(cfg)
    s.validate()
    return s


def kind_of_run(run: str) -> Optional[str]:
    """The kind of the run saved in folder ``run`` (None when no kind owns its config.json)."""
    try:
        with open(os.path.join(run, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    if cfg.get("task") in KINDS:
        return cfg["task"]
    for name in KINDS:
        mod = kind(name)
        if hasattr(mod, "owns") and mod.owns(cfg):
            return name
    for name in KINDS:  # a kind without owns: the config loads into its settings, key for key
        try:
            names = {f for f in kind(name).Settings.defaults()}
            if cfg and set(kind(name).Settings.upgrade(cfg)) <= names:
                return name
        except (ValueError, TypeError):
            continue
    return None

