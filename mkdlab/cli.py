"""``python -m mkdlab``: the command line (thin: it parses, calls the composition root and the studies, and turns
every error a user can cause into one line ``mkdlab: error: …`` with exit code 2).

Commands: ``demo`` (the main job), ``train`` (a preset with ``key=value`` overrides), ``eval``, ``teachers
train|import``, ``list presets|studies|methods|models|teachers``, ``export`` (a run's student as ONNX or
TorchScript), ``bench`` (images/second of one distillation step), ``reproduce`` (a study row: every column × seed,
and its results table) and ``visdom`` (an offline visdom server on 127.0.0.1). Every command that trains or
evaluates takes ``--device`` (``auto`` | ``cpu`` | ``cuda``), which for a config is the same as
``train.device=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkdlab.typed import ConfigError

LISTS = ("presets", "studies", "methods", "models", "teachers")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from mkdlab.data import DatasetNotFoundError
    from mkdlab.engine.trainer import NonFiniteLossError, TrainingInterrupted
    from mkdlab.storage import CheckpointError
    from mkdlab.studies import StudyRunError
    from mkdlab.teachers import TeacherPoolError

    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:
        print(f"mkdlab: {err}", file=sys.stderr)
        return 130
    except (ConfigError, DatasetNotFoundError, CheckpointError, TeacherPoolError, NonFiniteLossError,
            StudyRunError) as err:
        print(f"mkdlab: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FileNotFoundError) as err:  # any other a user can trigger: one line too
        if os.environ.get("MKDLAB_DEBUG"):
            raise
        print(f"mkdlab: error: {' '.join(str(err).split())} (MKDLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


class _Renamed(argparse.Action):
    """An old spelling users may have in scripts: refused with the new one (exit 2, no traceback)."""

    def __init__(self, option_strings: Sequence[str], dest: str, instead: str = "", **kwargs: Any) -> None:
        self.instead = instead
        super().__init__(option_strings, dest, nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string or self.dest} was renamed: use {self.instead}")


def _renamed(parser: argparse.ArgumentParser, old: str, instead: str) -> None:
    parser.add_argument(old, action=_Renamed, instead=instead)


def _renamed_command(sub: Any, old: str, instead: str) -> None:
    command = sub.add_parser(old, add_help=False)
    command.add_argument("rest", nargs=argparse.REMAINDER)
    spelled = command.prog.removeprefix("python -m mkdlab ")
    command.set_defaults(func=lambda args: _refuse(f"`{spelled}` was renamed: use `python -m mkdlab {instead}`"))


def _refuse(message: str) -> int:
    raise ConfigError(message)


def _device(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--device", default=default, metavar="DEVICE",
                        help="auto | cpu | cuda | cuda:N" + (" (default: the config's train.device, auto)"
                                                             if default is None else f" (default {default})"))


def _with_device(args: argparse.Namespace) -> list[str]:
    """The overrides of a config command, ``--device`` as ``train.device`` (first: an explicit override wins)."""
    return ([f"train.device={args.device}"] if args.device else []) + list(args.overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mkdlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: teachers, then students of several methods, on the embedded data")
    demo.add_argument("--profile", choices=["smoke", "quick", "full"], default=None,
                      help="work budget (default: MKDLAB_PROFILE, else quick)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--figures", default="figures", help="where the plots go (default figures/)")
    _device(demo, "auto")
    demo.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                      help="methods to train the student with (default: ce kd aver_kd ca_mkd de_mkd)")
    demo.add_argument("--train-teachers", action="store_true",
                      help="train the teachers (into $MKDLAB_HOME) instead of loading the ones shipped in mkdlab")
    demo.add_argument("overrides", nargs="*", help="key=value overrides applied to every demo run")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="train a student with a method preset")
    train.add_argument("preset", help="preset name (see `list presets`) or a YAML file")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=0.1")
    train.add_argument("--resume", action="store_true", help="continue the run in its run directory (under torchrun "
                       "a restarted group resumes by itself)")
    _device(train)
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="test accuracy of a run's best student or of a pool teacher")
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="a run directory (uses its config.yaml and best_student.pt)")
    target.add_argument("--teacher", help="a teacher-pool entry name")
    evaluate.add_argument("--dataset", help="dataset for --teacher (default: the teacher's own)")
    _device(evaluate, "auto")
    evaluate.set_defaults(func=_cmd_eval)

    teachers = sub.add_parser("teachers", help="the teacher pool: train or import teachers")
    actions = teachers.add_subparsers(metavar="ACTION")
    t_train = actions.add_parser("train", help="train a preset's teachers into the pool (those missing)")
    t_train.add_argument("preset", help="a preset with a teachers: section, e.g. demo, or a YAML file")
    t_train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. teachers.epochs=30 "
                         "teachers.seeds=[0,1,2] teachers.arch=resnet56")
    _device(t_train)
    for old in ("--arch", "--seeds", "--epochs", "--lr", "--batch-size", "--dataset", "--out"):
        key = {"--arch": "teachers.arch", "--seeds": "teachers.seeds", "--epochs": "teachers.epochs",
               "--lr": "teachers.lr", "--batch-size": "data.batch_size", "--dataset": "data.dataset",
               "--out": "output.dir"}[old]
        _renamed(t_train, old, f"a preset and overrides, e.g. `python -m mkdlab teachers train demo {key}=…`")
    t_train.set_defaults(func=_cmd_teachers_train)
    _renamed_command(actions, "list", "list teachers")
    t_import = actions.add_parser("import", help="import a RepDistiller/mdistiller checkpoint")
    t_import.add_argument("path")
    t_import.add_argument("--arch", required=True)
    t_import.add_argument("--dataset", default="cifar100")
    t_import.add_argument("--name")
    t_import.add_argument("--num-classes", type=int, default=None)
    t_import.set_defaults(func=_cmd_teachers_import)

    listing = sub.add_parser("list", help="list presets, studies, methods, models or teachers")
    listing.add_argument("what", choices=LISTS)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_cmd_list)
    _renamed_command(sub, "presets", "list presets")

    bench = sub.add_parser("bench", help="images/second of one multi-teacher distillation step, against the "
                           "reference-style loop")
    bench.add_argument("--teacher-arch", default="resnet56", help="architecture of every teacher")
    bench.add_argument("--student", default="resnet20")
    bench.add_argument("--num-teachers", type=int, default=3, help="number of teachers K")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    _device(bench, "auto")
    bench.add_argument("--dataset", default="fashion_mnist_mini")
    bench.add_argument("--num-classes", type=int, default=100, help="classes of the benchmarked models")
    _renamed(bench, "--teacher", "--teacher-arch")
    _renamed(bench, "--teachers", "--num-teachers")
    bench.set_defaults(func=_cmd_bench)

    reproduce = sub.add_parser("reproduce", help="run a study row (a paper table row or a comparison): every "
                               "column × seed, then write the results table")
    reproduce.add_argument("study", help="a study row (see `list studies`)")
    reproduce.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.epochs=2")
    reproduce.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)")
    reproduce.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                           help="only these columns of the row (default: all)")
    reproduce.add_argument("--out", default="runs/studies", help="where runs and results go (default runs/studies)")
    reproduce.add_argument("--jobs", type=int, default=1,
                           help="runs trained at once, each in its own process (default 1); small models leave a "
                           "GPU mostly idle, so on a GPU try the number of CPU cores")
    reproduce.add_argument("--executor", choices=["local", "ray"], default="local",
                           help="local: this machine (--jobs); ray: every run a task on a Ray cluster (pip install "
                           "-e \".[ray]\"), the run folder and MKDLAB_HOME shared by its nodes")
    reproduce.add_argument("--address", default=None, metavar="HOST:PORT",
                           help="with --executor ray: the cluster's head (default: RAY_ADDRESS, else a local Ray)")
    reproduce.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                           help="with --executor ray: CPUs (and PyTorch threads) of each run (default 1)")
    reproduce.add_argument("--gpus-per-run", type=float, default=None, metavar="F",
                           help="with --executor ray: GPU share of each run, a fraction lets small runs share a GPU "
                           "(default 0.125 on a cluster with GPUs, else 0)")
    reproduce.add_argument("--record-extras", action="store_true",
                           help="also keep each epoch's per-sample extras (teacher weights …) for the figures")
    reproduce.add_argument("--report-only", action="store_true", help="only write the table from finished runs")
    reproduce.add_argument("--figures", default=None, metavar="DIR",
                           help="also draw the study's figures (accuracy, teacher weights, Grad-CAM, cost) into DIR")
    _device(reproduce)
    _renamed(reproduce, "--methods", "--columns (labels of the row's columns)")
    _renamed(reproduce, "--list", "`python -m mkdlab list studies`")
    reproduce.set_defaults(func=_cmd_reproduce)

    export = sub.add_parser("export", help="write a run's best student as ONNX or TorchScript (BN folded, its "
                            "preprocessing in the file's metadata and a JSON sidecar)")
    export.add_argument("--run", required=True, help="a finished run directory (its best_student.pt)")
    export.add_argument("--format", required=True, metavar="FORMAT", help="onnx | torchscript")
    export.add_argument("--out", default=None, metavar="FILE",
                        help="the file to write (default RUN/student.onnx or RUN/student.torchscript.pt)")
    export.add_argument("--allow-unfinished", action="store_true",
                        help="export the best student of a run that stopped before its end (else refused)")
    export.set_defaults(func=_cmd_export)

    visdom = sub.add_parser("visdom", help="the visdom dashboard, offline (fetch its web assets once: --fetch-assets)",
                            description="Serve the visdom dashboard from web assets fetched once from the npm "
                            "registry (--fetch-assets). It binds 127.0.0.1; another --host needs VISDOM_USERNAME and "
                            "VISDOM_PASSWORD in the environment (visdom's login).")
    visdom.add_argument("--fetch-assets", action="store_true",
                        help="download the page's JS/CSS/fonts from npm packages into --assets-dir, then exit")
    visdom.add_argument("--port", type=int, default=8097, help="port to listen on (default 8097)")
    visdom.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs VISDOM_USERNAME/VISDOM_PASSWORD)")
    visdom.add_argument("--env-path", type=Path, default=None, metavar="DIR",
                        help="where visdom saves environments (default ~/.visdom)")
    visdom.add_argument("--assets-dir", type=Path, default=None, metavar="DIR",
                        help="the fetched web assets (default $MKDLAB_VISDOM_ASSETS or ~/.cache/mkdlab/visdom-static)")
    visdom.add_argument("--api-only", action="store_true",
                        help="serve only the HTTP API training logs to, without the web page (no assets needed)")
    visdom.set_defaults(func=_cmd_visdom)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from mkdlab.demo import DEFAULT_METHODS, run_demo
    from mkdlab.experiment import method_class

    listed = args.methods or []
    overrides = [*args.overrides, *(word for word in listed if "=" in word)]  # `--methods a b key=v` ends the list
    methods = [word for word in listed if "=" not in word] or DEFAULT_METHODS
    for method in methods:
        method_class(method)
    run_demo(profile=args.profile, out=Path(args.out), figures=Path(args.figures), device=args.device,
             overrides=overrides, methods=methods, train_teachers=args.train_teachers)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mkdlab.engine.device import resolve_device
    from mkdlab.engine.distributed import DistributedContext
    from mkdlab.experiment import load_experiment, run_experiment

    config = load_experiment(args.preset, _with_device(args))
    group = DistributedContext.from_environment(resolve_device(config.train.device))  # torchrun: join the group
    result, _ = run_experiment(config, resume=args.resume)
    if group.is_main:
        ranks = f" on {group.world_size} processes" if group.distributed else ""
        print(f"{config.name}: last top-1 {result.last_top1:.2f}%  best top-1 {result.best_top1:.2f}% "
              f"(epoch {result.best_epoch})  in {result.wall_time_s:.0f} s{ranks}; outputs in {config.run_dir()}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mkdlab.evaluation import evaluate_run, evaluate_teacher

    metrics = evaluate_run(Path(args.run), args.device) if args.run else evaluate_teacher(
        args.teacher, args.dataset, args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_teachers_train(args: argparse.Namespace) -> int:
    from mkdlab.experiment import load_experiment, load_teachers, teacher_entry_names
    from mkdlab.teachers import TeacherPool

    config = load_experiment(args.preset, _with_device(args))
    if config.teachers is None:
        raise ConfigError(f"{args.preset!r} has no teachers: section; give one with overrides, e.g. "
                          f"teachers.arch=resnet20 teachers.seeds=[0,1,2]")
    pool = TeacherPool()
    load_teachers(config, pool)
    entries = pool.entries()
    for name in teacher_entry_names(config):
        entry = entries[name]
        print(f"{entry.name}: top-1 {entry.top1:.2f}%  ({pool.path_of(name)})")
    return 0


def _cmd_teachers_import(args: argparse.Namespace) -> int:
    from mkdlab.data import dataset_info
    from mkdlab.teachers import TeacherPool

    info = dataset_info(args.dataset)
    entry = TeacherPool().import_external(args.path, arch=args.arch, dataset=args.dataset, name=args.name,
                                          num_classes=args.num_classes or info.num_classes,
                                          in_channels=info.in_channels)
    print(f"imported {entry.name} (sha256 {entry.sha256[:12]}…)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mkdlab.listing import listing

    rows, text = listing(args.what)
    print(json.dumps(rows, indent=2) if args.json else text)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from mkdlab.bench import run_step_benchmark

    run_step_benchmark(teacher=args.teacher_arch, student=args.student, num_teachers=args.num_teachers,
                       batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                       dataset=args.dataset, num_classes=args.num_classes)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mkdlab.studies import load_study, read_records, run_study, write_report

    row = load_study(args.study, _with_device(args))
    for label in args.columns or ():
        row.column(label)
    if args.report_only:
        records = read_records(args.out, row)
    else:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        records = run_study(row, args.seeds, out=args.out, labels=args.columns, jobs=args.jobs,
                            record_extras=args.record_extras, executor=_executor(args))
    if not records:
        print(f"no finished runs of {row.name} under {args.out}")
        return 1
    csv_path, md_path = write_report(row, records, args.out)
    print(md_path.read_text())
    print(f"results: {md_path}  {csv_path}")
    if args.figures:
        from mkdlab.studies.figures import write_figures

        paths = write_figures(row, records, args.out, args.figures)
        print("figures: " + "  ".join(str(p) for p in paths))
    return 0


def _executor(args: argparse.Namespace) -> Any:
    """The Ray executor ``--executor ray`` asks for (``None``: the local one, ``--jobs`` processes)."""
    if args.executor == "local":
        if args.address:
            raise ConfigError("--address names a Ray cluster: add --executor ray")
        return None
    if args.jobs != 1:
        raise ConfigError("--jobs packs runs on this machine; with --executor ray give --cpus-per-run/--gpus-per-run")
    from mkdlab.studies.ray_executor import RayExecutor

    return RayExecutor(args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)


def _cmd_export(args: argparse.Namespace) -> int:
    from mkdlab.export import export_run

    done = export_run(Path(args.run), args.format, args.out, allow_unfinished=args.allow_unfinished)
    meta = done.metadata
    unfinished = "" if meta["finished"] else f"; UNFINISHED: stopped after epoch {meta['epochs_trained']}"
    print(f"wrote {done.path} ({done.path.stat().st_size / 1e3:.0f} kB; {meta['student']} trained by "
          f"{meta['method']}, best top-1 {meta['best_top1']}%, {meta['folded_batchnorms']} BatchNorms folded"
          f"{unfinished}) and its metadata {done.sidecar}")
    return 0


def _cmd_visdom(args: argparse.Namespace) -> int:
    if args.fetch_assets:
        from mkdlab.engine.visdom_assets import fetch_assets

        print("fetching visdom's web assets from the npm registry:", flush=True)
        print(f"visdom assets: {fetch_assets(args.assets_dir)}")
        return 0
    from mkdlab.engine.visdom_server import serve

    return serve(args.port, args.host, args.env_path, args.assets_dir, api_only=args.api_only)
