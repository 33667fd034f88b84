"""The run kinds, registered once: ``gfnem train KIND`` for each entry of ``KINDS``.

A run kind is a module declaring (see ``gfnem_jax.driver`` and ``docs/adding.rst``):

  NAME, HELP                       its name and one line of help
  Settings                         its settings (a ``config.Settings`` dataclass inheriting
                                   ``run_dir.CheckpointSettings``): flags, validation, config.json
                                   (``to_config`` / ``from_config``)
  build(settings) -> Experiment    what the driver runs
  owns(config) -> bool             (optional) whether a saved config.json is a run of this kind
  sample(run, n, seed, progress)   (optional) ``gfnem sample``: n terminal states, an int array
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
    mod = importlib.import_module(KINDS[name])
    from gfnem_jax.run_dir import CheckpointSettings
    if not (isinstance(getattr(mod, "Settings", None), type)  # TEMPORARY: kinds being converted
            and issubclass(mod.Settings, CheckpointSettings)):
        _legacy(name, mod)
    return mod


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
    return None


def _legacy(name, mod):  # TEMPORARY: the protocol's names for kinds being converted
    cls = {"grammar": "GrammarSettings", "dvae": "DVAESettings", "ebm": "EBMSettings"}[name]
    mod._LEGACY = True
    mod.Settings = getattr(mod, cls)
    mod.HELP = getattr(mod, "HELP", {
        "grammar": "grammar induction: a neural PCFG / NCFG (or a given grammar) by GFlowNet-EM "
                   "(--method gflownet: a parse-tree GFlowNet as the E-step), marginalisation, "
                   "exact-sampling EM or MC-EM",
        "ebm": "an energy model and its GFlowNet sampler trained jointly (EB-GFN), or PCD / GwG",
        "dvae": "discrete VAE (a grid of K codes) with a GFlowNet encoder by GFlowNet-EM, or "
                "baselines"}[name])
    if name == "grammar" and not hasattr(mod, "COMMANDS"):
        from gfnem_jax.experiments import grammar_cli as g
        mod.COMMANDS = (
            Command("parse", "parse a corpus with a grammar run or a grammar file",
                    g.add_parse_args, g.parse_main, (mod.Settings,)),
            Command("export-grammar", "export a learned CFG as a .npz grammar file",
                    g.add_export_args, g.export_main, (mod.Settings,)))
    if name == "dvae" and not hasattr(mod, "EVAL"):
        from gfnem_jax.experiments import dvae_cli as d
        mod.EVAL = Command("dvae", "discrete VAE: test NLL by importance sampling",
                           d.add_eval_args, d.eval_main, (mod.Settings,))
    if name == "ebm" and not hasattr(mod, "sample"):
        mod.sample = lambda run, n, seed, progress=False: mod.sample_run(run, n, seed)
