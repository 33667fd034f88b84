"""TEMPORARY: the grammar commands under their old names, until the CLI takes them from
``experiments.grammar.COMMANDS`` (then this module goes)."""
from __future__ import annotations

from gfnem_jax.experiments.grammar import COMMANDS

add_parse_args, parse_main = COMMANDS[0].add_args, COMMANDS[0].main
add_export_args, export_main = COMMANDS[1].add_args, COMMANDS[1].main
