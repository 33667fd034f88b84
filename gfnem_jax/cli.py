"""The ``gfnem`` command line: train, sample, bench.

Flags come from the declared settings (``gfnem_jax.config``); the CLI is the only place that
speaks of flags: library errors name settings, and ``flag_message`` turns those names into
flags here. Bad settings fail before anything is written, with one line on stderr naming the flag,
the value and what is allowed, and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Dict, Optional, Sequence, Tuple

from gfnem_jax import config


# -- flags from declared settings (gfnem_jax.config): the CLI's side of a declaration ---------

def flag_name(f: dataclasses.Field, flags: Optional[Dict[str, str]] = None) -> str:
    """The CLI flag of setting ``f``: ``flags[name]`` (the CLI's own spellings), else ``--`` + the
    name with dashes, or ``--no-`` + it for a setting that is on by default."""
    if flags and f.name in flags:
        return flags[f.name]
    dashed = f.name.replace("_", "-")
    return "--no-" + dashed if f.default is True else "--" + dashed


def add_settings(parser, cls: type, group: Optional[str] = None,
                 exclude: Tuple[str, ...] = (), flags: Optional[Dict[str, str]] = None) -> None:
    """Add one flag per CLI field of ``cls`` (type, default and help from the declaration);
    ``flags``: the CLI's spelling of settings whose flag is not derived from the name."""
    g = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        m = config.meta(f)
        if not m.get("cli", True) or f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = m.get("help", "").replace("%", "%%")  # argparse formats help with %
        if m.get("choices"):
            helptext += f" (one of: {', '.join(map(str, m['choices']))})"
        names = [flag_name(f, flags)] + ["--" + old.replace("_", "-") for old in m.get("was", ())]
        # a flag not given leaves no attribute (default SUPPRESS): settings_from_args then knows
        # what the user set, for the presets (Settings.PRESETS) and the declared defaults
        preset = _preset_help(cls, f.name, flags)
        if isinstance(default, bool):  # the help describes the setting; a flag of one on by
            # default turns it off
            helptext += f" ({preset})" if preset else ""
            g.add_argument(*names, dest=f.name, action="store_false" if default else "store_true",
                           default=argparse.SUPPRESS,
                           help=("turn off (on by default): " if default else "") + helptext)
            continue
        typ = type(default) if default is not None else str
        shown = f"default {default}" + (f"; {preset}" if preset else "")
        g.add_argument(*names, dest=f.name, type=typ, default=argparse.SUPPRESS,
                       help=f"{helptext} ({shown})")


def _preset_help(cls: type, name: str, flags: Optional[Dict[str, str]]) -> str:
    """"VALUE with --FLAG [V]; ..." for the presets of setting ``name`` (``Settings.PRESETS``)."""
    if not hasattr(cls, "presets_of"):
        return ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for k, w, d in cls.presets_of(name):
        flag = flag_name(fields[k], flags)
        given = flag if isinstance(w, bool) else f"{flag} {w}"
        shown = ("on" if d else "off") if isinstance(d, bool) else d
        out.append(f"{shown} with {given}")
    return "; ".join(out)


def settings_from_args(cls: type, args, **overrides):
    """Build ``cls`` from parsed CLI args: the flags given, then the presets they imply
    (``Settings.make``), then the declared defaults."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    kw.update(overrides)
    return cls.make(**kw) if hasattr(cls, "make") else cls(**kw)


def flag_message(msg: str, classes: Sequence[type] = (),
                 flags: Optional[Dict[str, str]] = None) -> str:
    """Turn setting names at the start of / inside an error message into CLI flags.

    Only the CLI calls this: ``"batch_size must be >= 1"`` -> ``"--batch-size must be >= 1"``.
    Names are taken from ``classes``' fields (spelled as ``flag_name(f, flags)``) and from
    ``flags`` itself; any other ``snake_case`` word is left alone.
    """
    names = dict(flags or {})
    for cls in classes:
        for f in dataclasses.fields(cls):
            names[f.name] = flag_name(f, flags)
            for old in config.meta(f).get("was", ()):
                names.setdefault(old, flag_name(f, flags))
    if not names:
        return msg

    def sub(m):
        w = m.group(0)
        return names.get(w, w)

    return re.sub(r"(?<![\w-])[a-z][a-z0-9_]*(?![\w-])", sub, msg)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"gfnem: error: {message}\n")
        sys.exit(2)


# the CLI's spelling of settings whose flag is not "--" + the name ("--no-" + it when on by
# default), and of the process settings of jax.distributed
FLAGS = {"keep_checkpoints": "--keep", "normalized": "--unnormalized",
         "shared_torso": "--separate-torso", "num_processes": "--num-processes",
         "process_id": "--process-id", "coordinator": "--coordinator"}


def _fail(msg: str, classes=()):
    sys.stderr.write(f"gfnem: error: {flag_message(msg, classes, FLAGS)}\n")
    sys.exit(2)


def _add_run_args(p, resume=True):
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory to create (must not hold another run)")
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (from step 0 "
                            "if it has none) up to --steps, exactly as if it had never stopped "
                            "(other settings must match)")
    g.add_argument("--overwrite", action="store_true",
                   help="allow --out to be a directory holding an earlier gfnem run (it is replaced)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (on by default in "
                        "~/.cache/gfnem_jax/jax_cache; also off with GFNEM_NO_COMPILE_CACHE=1)")
    d = p.add_argument_group("processes (jax.distributed; start the same command in every process)")
    d.add_argument("--num-processes", type=int, default=None,
                   help="processes of the run, on one or several hosts (default: JAX_NUM_PROCESSES "
                        "or 1); --devices then counts the devices of all processes together and "
                        "defaults to all of them")
    d.add_argument("--process-id", type=int, default=None,
                   help="this process's index, 0..P-1 (default: JAX_PROCESS_ID); process 0 writes "
                        "the run files")
    d.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 (default: JAX_COORDINATOR_ADDRESS)")


def build_parser() -> argparse.ArgumentParser:
    from gfnem_jax import experiments
    p = _Parser(prog="gfnem", description="GFlowNets and GFlowNet-EM in JAX.",
                epilog=command_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    pt = sub.add_parser("train", help="train a GFlowNet (or run GFlowNet-EM) and write a run directory",
                        description="Train on a task; writes OUT/config.json, OUT/metrics.jsonl and a checkpoint.")
    tasks = pt.add_subparsers(dest="task", metavar="TASK", parser_class=_Parser)
    tasks.required = True
    evals = None
    for name in experiments.KINDS:
        mod = experiments.kind(name)
        kp = tasks.add_parser(name, help=mod.HELP, description=mod.HELP)
        add_settings(kp, mod.Settings, group=name, flags=FLAGS)
        _add_run_args(kp)
        for cmd in getattr(mod, "COMMANDS", ()):
            cp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            cmd.add_args(cp)
            cp.set_defaults(command_fn=cmd, command_kind=name)
        if hasattr(mod, "EVAL"):
            if evals is None:
                pv = sub.add_parser("eval", help="evaluate a run (held-out metrics)")
                evals = pv.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
                evals.required = True
            ep = evals.add_parser(name, help=mod.EVAL.help, description=mod.EVAL.help)
            mod.EVAL.add_args(ep)
            ep.set_defaults(command_fn=mod.EVAL, command_kind=name)

    ps = sub.add_parser("sample", help="draw terminal states from a trained run",
                        description="Write the terminal states of N fresh on-policy samples as an "
                                    "integer .npy array [N, ...] (run kinds: "
                                    f"{', '.join(_kinds_with('sample'))}).")
    ps.add_argument("--run", required=True, help="run directory written by `gfnem train`")
    ps.add_argument("--n", type=int, default=100000, help="number of samples (>= 1; default 100000)")
    ps.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    ps.add_argument("--out", required=True, help="output .npy file")

    pb = sub.add_parser("bench", help="run a benchmark (tables + JSON)",
                        description="Benchmarks; see benchmarks/ for the scripts.")
    pb.add_argument("name", choices=["hypergrid_speed", "divergences"], help="which benchmark")
    pb.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return p


def _dir_holds_other_run(out: str) -> bool:
    return os.path.exists(out) and (not os.path.isdir(out) or bool(os.listdir(out)))


def check_out(args, resuming: bool = False) -> None:
    """Refuse an --out that cannot be written or that holds another run (nothing is written)."""
    out = os.path.abspath(args.out)
    if resuming:
        if getattr(args, "overwrite", False):
            _fail("--resume continues the run in --out and --overwrite replaces it; pass one")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        _fail(f"--out {args.out!r} is a file, not a directory; choose a new directory")
    if _dir_holds_other_run(out):
        is_run = os.path.isfile(os.path.join(out, "config.json"))
        if is_run and not getattr(args, "overwrite", False):
            _fail(f"--out {args.out!r} holds another gfnem run; choose a new directory, pass "
                  f"--resume to continue it, or --overwrite to replace it")
        if not is_run:
            _fail(f"--out {args.out!r} holds files that are not a gfnem run (--overwrite replaces "
                  f"only a gfnem run); choose a new or empty directory")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        _fail(f"--out {args.out!r} is under {parent!r}, which is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"--out {args.out!r} cannot be created: {parent!r} is not writable")


def _clear_for_overwrite(args):
    if getattr(args, "overwrite", False) and _dir_holds_other_run(args.out):
        import shutil
        shutil.rmtree(args.out)


def _settings_or_fail(args, classes, make):
    """``make()`` (building and validating the settings, and the resume check), or exit 2."""
    try:
        return make()
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), classes)


def _train_run(args, classes, run):
    """Prepare --out (nothing is cleared when resuming), then ``run()``: a non-finite loss stops
    with exit 1, a bad setting or input with one line and exit 2. With several processes only
    process 0 checks and prepares --out."""
    from gfnem_jax import distributed
    from gfnem_jax.host_loop import NonFiniteLoss
    if distributed.is_primary() and not args.resume:
        _clear_for_overwrite(args)
    if distributed.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("gfnem_out_ready")
    try:
        return run()
    except NonFiniteLoss as e:
        sys.stderr.write(f"gfnem: stopped: {e}\n")
        sys.exit(1)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), classes)


def _train(args):
    """``gfnem train KIND``: the kind's settings from the flags, its Experiment, the driver."""
    from gfnem_jax import distributed, driver, experiments, sizes
    mod = experiments.kind(args.task)
    classes = (mod.Settings,)

    def make():
        s = settings_from_args(mod.Settings, args)
        s.validate()
        s.check_processes(_process_count())
        sizes.check_train(mod, s)  # a run that clearly cannot fit: before any work
        if distributed.is_primary():  # before any work: nothing is written until the run starts
            check_out(args, resuming=args.resume)
        exp = mod.build(s)
        if args.resume:
            driver.check_resume(exp, args.out)
        return exp

    exp = _settings_or_fail(args, classes, make)
    res = _train_run(args, classes, lambda: driver.run(exp, args.out, progress=not args.quiet,
                                                      resume=args.resume))
    print(json.dumps(exp.report(res) if exp.report is not None else res["final"], default=float))


def _process_count() -> int:
    import jax
    return jax.process_count()


def command_table() -> str:
    """Which commands apply to which run kind (from the registry's declarations)."""
    from gfnem_jax import experiments
    from gfnem_jax.run_dir import CheckpointSettings
    cols = ["train", "--resume", "--num-processes", "sample", "eval"]
    rows = []
    for k in experiments.KINDS:
        mod = experiments.kind(k)
        own = [c.name for c in getattr(mod, "COMMANDS", ())]
        for c in own:
            if c not in cols:
                cols.append(c)
        some = mod.Settings.check_processes is not CheckpointSettings.check_processes
        has = {"train": "x", "--resume": "x", "--num-processes": "*" if some else "x"}
        has.update({c: "x" for c in own})
        has.update({"sample": "x"} if hasattr(mod, "sample") else {})
        has.update({"eval": "x"} if hasattr(mod, "EVAL") else {})
        rows.append((k, has))
    width = max(len(k) for k, _ in rows) + 2
    lines = ["commands by run kind (x: applies; *: with some settings, the error names them):",
             " " * width + "  ".join(cols)]
    for k, has in rows:
        lines.append((k.ljust(width) + "  ".join(has.get(c, "-").center(len(c))
                                                 for c in cols)).rstrip())
    return "\n".join(lines)


def _check_run_kind(args, cmd) -> None:
    """A kind's own command given a --run of another kind: one line naming what applies."""
    from gfnem_jax import experiments
    run = getattr(args, "run", None)
    if not run or not os.path.isdir(run):
        return
    k = experiments.kind_of_run(run)
    if k is not None and k != args.command_kind:
        what = "eval " + cmd.name if args.command == "eval" else cmd.name
        _fail(f"--run {run!r} is a {k} run; gfnem {what} takes {args.command_kind} runs "
              f"(gfnem --help lists the commands of each run kind)")


def _kinds_with(attr: str):
    from gfnem_jax import experiments
    return [k for k in experiments.KINDS if hasattr(experiments.kind(k), attr)]


def _sample(args):
    """``gfnem sample``: the .npy's size checked against the free disk first, then the kind's
    ``sample(run, n, seed, progress, out=)``, which calls ``out(shape, dtype)`` once for the array
    to fill (here an ``open_memmap`` of --out) and writes it chunk by chunk."""
    import numpy as np
    from gfnem_jax import experiments, run_dir, sizes
    if args.n < 1:
        _fail(f"--n must be >= 1, got {args.n}")
    if not os.path.isdir(args.run):
        _fail(f"--run {args.run!r} is not a directory")
    if os.path.exists(args.out):
        _fail(f"--out {args.out!r} already exists; choose a new file")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):  # refused before any sampling, as gfnem train refuses --out
        _fail(f"--out {args.out!r}: its directory {os.path.dirname(args.out)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"--out {args.out!r}: its directory {os.path.dirname(args.out)!r} is not writable")
    kind = experiments.kind_of_run(args.run)
    if kind is None and run_dir.config_problem(args.run):  # missing or damaged: say which
        _fail(f"--run {args.run!r}: {run_dir.config_problem(args.run)}")
    if kind is None or not hasattr(experiments.kind(kind), "sample"):
        what = f"a {kind} run" if kind else "not a run gfnem can sample from"
        _fail(f"--run {args.run!r} is {what}; gfnem sample takes runs of "
              f"{', '.join(_kinds_with('sample'))}")
    fn = experiments.kind(kind).sample
    n_flag = {"n": "--n"}
    try:
        row = sizes.sample_row(experiments.kind(kind), run_dir.load_config(args.run))
        if row is not None:
            sizes.check_sample_disk(args.n, *row, args.out)
    except ValueError as e:
        _fail(flag_message(_named_run(str(e)), flags=n_flag))

    def open_out(shape, dtype):  # the kind knows the row shape once its run is loaded
        try:
            sizes.check_sample_disk(shape[0], shape[1:], dtype, args.out)
        except ValueError as e:
            _fail(flag_message(str(e), flags=n_flag))
        return np.lib.format.open_memmap(args.out, mode="w+", dtype=dtype, shape=tuple(shape))

    try:
        x = fn(args.run, args.n, args.seed, progress=True, out=open_out)
    except ValueError as e:
        _remove_partial(args.out)
        _fail(_named_run(str(e)))
    except BaseException:  # Ctrl-C or a crash while streaming: no half-written .npy is left
        _remove_partial(args.out)
        raise
    x.flush()
    del x
    x = np.load(args.out, mmap_mode="r")
    print(f"wrote {args.out}: {x.dtype} array of shape {list(x.shape)}")


def _remove_partial(out: str) -> None:
    if os.path.exists(out):
        os.remove(out)


def _named_run(msg: str) -> str:
    """A library error about a run folder ("run 'x' ...") names the --run flag."""
    return "--" + msg if msg.startswith("run ") else msg


def _bench(args):
    import runpy
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(os.path.dirname(here), "benchmarks", f"{args.name}.py")
    if not os.path.isfile(script):
        _fail(f"benchmark script {script} not found (benchmarks/ ships with the source checkout)")
    sys.argv = [script] + list(args.rest)
    runpy.run_path(script, run_name="__main__")


def _compile_cache(args):
    if getattr(args, "no_compile_cache", False) or os.environ.get("GFNEM_NO_COMPILE_CACHE") == "1":
        return
    from gfnem_jax.startup import enable_compilation_cache
    try:
        enable_compilation_cache("default")
    except (OSError, ValueError):  # an unwritable cache directory costs speed, not the run
        pass


def _join_processes(args, argv):
    """jax.distributed for a train command (before any JAX computation); with several processes
    --devices defaults to every device of every process."""
    from gfnem_jax import distributed
    try:
        joined = distributed.initialize(args.num_processes, args.process_id, args.coordinator)
    except ValueError as e:
        _fail(str(e))
    if not joined:
        return
    import jax
    if not hasattr(args, "devices") and "--devices" not in argv:  # not given (flags not given
        # leave no attribute); settings_from_args ignores it for a kind without the setting
        args.devices = jax.device_count()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    _compile_cache(args)
    try:
        if args.command == "train":
            _join_processes(args, argv)
            return _train(args)
        if hasattr(args, "command_fn"):  # a command a run kind declares (parse, eval KIND, ...)
            cmd = args.command_fn
            _check_run_kind(args, cmd)
            try:
                return cmd.main(args)
            except (ValueError, FileNotFoundError) as e:
                _fail(_named_run(str(e)), cmd.settings)
        if args.command == "sample":
            return _sample(args)
        if args.command == "bench":
            return _bench(args)
    except KeyboardInterrupt as e:
        what = str(e) if str(e) else "interrupted; the last checkpoint is kept"
        sys.stderr.write(f"gfnem: {what} (resume with --resume)\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
