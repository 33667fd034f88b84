"""The ``gfnem`` command line: train, sample, bench.

Flags come from the declared settings (``gfnem_jax.config``); the CLI is the only place that
speaks of flags: library errors name settings, and ``config.flag_message`` turns those names into
flags here. Bad settings fail before anything is written, with one line on stderr naming the flag,
the value and what is allowed, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

GFN_TASKS = ("hypergrid", "sets", "sequences")
# run kinds declared by a Settings class and a run(settings, out, progress, resume) function
RUN_KINDS = {
    "grammar": ("gfnem_jax.experiments.grammar", "GrammarSettings",
                "grammar induction: a neural PCFG / NCFG (or a given grammar) by GFlowNet-EM "
                "(--method gflownet: a parse-tree GFlowNet as the E-step), marginalisation, "
                "exact-sampling EM or MC-EM"),
    "dvae": ("gfnem_jax.experiments.dvae", "DVAESettings",
             "discrete VAE (a grid of K codes) with a GFlowNet encoder by GFlowNet-EM, or baselines"),
    "ebm": ("gfnem_jax.experiments.ebm", "EBMSettings",
            "an energy model and its GFlowNet sampler trained jointly (EB-GFN), or PCD / GwG"),
}


def _settings_class(mod_name, cls_name):
    import importlib
    return getattr(importlib.import_module(mod_name), cls_name)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"gfnem: error: {message}\n")
        sys.exit(2)


def _fail(msg: str, classes=()):
    from gfnem_jax.config import flag_message
    sys.stderr.write(f"gfnem: error: {flag_message(msg, classes)}\n")
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
    from gfnem_jax import config
    from gfnem_jax.experiments import runner
    p = _Parser(prog="gfnem", description="GFlowNets and GFlowNet-EM in JAX.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    pt = sub.add_parser("train", help="train a GFlowNet (or run GFlowNet-EM) and write a run directory",
                        description="Train on a task; writes OUT/config.json, OUT/metrics.jsonl and a checkpoint.")
    tasks = pt.add_subparsers(dest="task", metavar="TASK", parser_class=_Parser)
    tasks.required = True
    for name in GFN_TASKS:
        mod = runner.task_module(name)
        tp = tasks.add_parser(name, help=mod.HELP, description=mod.HELP)
        config.add_arguments(tp, mod.SETTINGS, group="task")
        config.add_arguments(tp, runner.TrainSettings, group="training")
        _add_run_args(tp)
    from gfnem_jax.experiments import mixture
    mp = tasks.add_parser("mixture", help=mixture.HELP, description=mixture.HELP)
    config.add_arguments(mp, mixture.MixtureSettings, group="GFlowNet-EM")
    _add_run_args(mp)
    for name, (mod_name, cls_name, help_) in RUN_KINDS.items():
        kp = tasks.add_parser(name, help=help_, description=help_)
        config.add_arguments(kp, _settings_class(mod_name, cls_name), group=name)
        _add_run_args(kp)

    from gfnem_jax.experiments import grammar_cli
    pp = sub.add_parser("parse", help="parse a corpus with a grammar run or a grammar file",
                        description="Write one JSON object per sentence: {logprob, spans}.")
    grammar_cli.add_parse_args(pp)
    pe = sub.add_parser("export-grammar", help="export a learned CFG as a .npz grammar file")
    grammar_cli.add_export_args(pe)
    pv = sub.add_parser("eval", help="evaluate a run (test NLL by importance sampling)")
    ek = pv.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
    ek.required = True
    from gfnem_jax.experiments import dvae_cli
    dvae_cli.add_eval_args(ek.add_parser("dvae", help="discrete VAE: test NLL by importance sampling"))

    ps = sub.add_parser("sample", help="draw terminal states from a trained run",
                        description="Write the terminal states of N fresh on-policy samples as an integer .npy array [N, ...].")
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
        return
    if _dir_holds_other_run(out):
        if not (getattr(args, "overwrite", False) and os.path.isfile(os.path.join(out, "config.json"))):
            _fail(f"--out {args.out!r} exists and is not empty (it holds another run); choose a new "
                  f"directory, or pass --overwrite to replace an earlier gfnem run")
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
    except ValueError as e:
        _fail(str(e), classes)


def _train_run(args, classes, run):
    """Prepare --out (nothing is cleared when resuming), then ``run()``: a non-finite loss stops
    with exit 1, a bad setting or input with one line and exit 2. With several processes only
    process 0 checks and prepares --out."""
    from gfnem_jax import distributed
    from gfnem_jax.loop import NonFiniteLoss
    if distributed.is_primary():
        check_out(args, resuming=args.resume)
        if not args.resume:
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


def _train_gfn(args):
    from gfnem_jax import config
    from gfnem_jax.experiments import runner
    mod = runner.task_module(args.task)
    classes = (mod.SETTINGS, runner.TrainSettings)

    def make():
        env_s = config.from_args(mod.SETTINGS, args)
        train_s = config.from_args(runner.TrainSettings, args)
        env_s.validate()
        train_s.validate()
        cfg = runner.config_dict(args.task, env_s, train_s)
        if args.resume:
            runner.check_resume(cfg, args.out)
        return cfg

    cfg = _settings_or_fail(args, classes, make)
    res = _train_run(args, classes, lambda: runner.run(cfg, args.out, progress=not args.quiet,
                                                      resume=args.resume))
    print(json.dumps(res["final"]))


def _train_mixture(args):
    from gfnem_jax import config, run_dir
    from gfnem_jax.experiments import mixture
    classes = (mixture.MixtureSettings,)

    def make():
        s = config.from_args(mixture.MixtureSettings, args)
        s.validate()
        if args.resume:
            run_dir.check_resume(s.to_dict(), args.out, defaults=mixture.MixtureSettings.defaults())
        return s

    s = _settings_or_fail(args, classes, make)
    res = _train_run(args, classes, lambda: mixture.run(s, args.out, progress=not args.quiet,
                                                       resume=args.resume))
    summ = res["summary"]
    print(json.dumps({"loglik": summ["loglik"], "gap_to_exact_em": summ["gap_to_exact_em"],
                      "posterior_tv_gflownet": summ["posterior_tv_gflownet"],
                      "seconds": round(res["timing"]["total_s"], 1)}))


def _train_kind(args):
    import importlib
    from gfnem_jax import config
    mod_name, cls_name, _ = RUN_KINDS[args.task]
    cls = _settings_class(mod_name, cls_name)

    def make():
        s = config.from_args(cls, args)
        s.validate()
        return s

    s = _settings_or_fail(args, (cls,), make)
    res = _train_run(args, (cls,), lambda: importlib.import_module(mod_name).run(
        s, args.out, progress=not args.quiet, resume=args.resume))
    final = res.get("final", res) if isinstance(res, dict) else res
    print(json.dumps(final, default=float))


def _run_glue(fn, args, classes=()):
    try:
        return fn(args)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), classes)


def _sample(args):
    import numpy as np
    from gfnem_jax.experiments import runner
    if args.n < 1:
        _fail(f"--n must be >= 1, got {args.n}")
    if not os.path.isdir(args.run):
        _fail(f"--run {args.run!r} is not a directory")
    if os.path.exists(args.out):
        _fail(f"--out {args.out!r} already exists; choose a new file")
    kind = _run_kind(args.run)
    if kind == "ebm":
        from gfnem_jax.experiments import ebm
        try:
            x = ebm.sample_run(args.run, args.n, args.seed)
        except ValueError as e:
            _fail(str(e).replace("run ", "--run ", 1))
        np.save(args.out, x)
        print(f"wrote {args.out}: {x.dtype} array of shape {list(x.shape)}")
        return
    try:
        cfg, env, gfn, params = runner.load_run(args.run)
    except ValueError as e:
        _fail(str(e).replace("run ", "--run ", 1))
    x = runner.sample_terminals(env, gfn, params, args.n, args.seed, progress=True).astype(np.int64)
    np.save(args.out, x)
    print(f"wrote {args.out}: {x.dtype} array of shape {list(x.shape)}")


def _run_kind(run_dir):
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f).get("task")
    except (OSError, ValueError, AttributeError):
        return None


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


MULTI_PROCESS = ("hypergrid", "sets", "sequences", "mixture", "ebm", "dvae", "grammar")  # grammar last


def _join_processes(args, argv):
    """jax.distributed for a train command (before any JAX computation); with several processes
    --devices defaults to every device of every process."""
    from gfnem_jax import distributed
    try:
        joined = distributed.initialize(args.num_processes, args.process_id, args.coordinator)
    except ValueError as e:
        _fail(str(e).replace("num_processes", "--num-processes").replace("process_id", "--process-id")
              .replace("coordinator", "--coordinator"))
    if not joined:
        return
    import jax
    if args.task not in MULTI_PROCESS or (args.task == "grammar" and args.method != "gflownet"):
        _fail(f"--num-processes {jax.process_count()}: train {args.task} runs in one process "
              f"(several processes: {', '.join(MULTI_PROCESS[:-1])}, grammar --method gflownet)")
    if getattr(args, "devices", None) == 1 and "--devices" not in argv:
        args.devices = jax.device_count()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    _compile_cache(args)
    try:
        if args.command == "train":
            _join_processes(args, argv)
            if args.task == "mixture":
                return _train_mixture(args)
            if args.task in RUN_KINDS:
                return _train_kind(args)
            return _train_gfn(args)
        if args.command in ("parse", "export-grammar"):
            from gfnem_jax.experiments import grammar, grammar_cli
            fn = grammar_cli.parse_main if args.command == "parse" else grammar_cli.export_main
            return _run_glue(fn, args, (grammar.GrammarSettings,))
        if args.command == "eval":
            from gfnem_jax.experiments import dvae, dvae_cli
            return _run_glue(dvae_cli.eval_main, args, (dvae.DVAESettings,))
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
