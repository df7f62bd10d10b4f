"""``python -m mkdlab``: the command line.

Subcommands: ``demo`` (the main job), ``train`` (a preset with ``key=value`` overrides), ``eval``, ``teachers
train|list|import``, ``bench`` (images/second of one distillation step), ``reproduce`` (a paper-table row or a
comparison: every method × seed, and its results table), ``presets`` and ``visdom`` (an offline visdom server on
127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mkdlab.typed import ConfigError


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mkdlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: teachers, CE, KD and multi-teacher KD on the embedded data")
    demo.add_argument("--profile", choices=["smoke", "quick", "full"], default=None,
                      help="work budget (default: MKDLAB_PROFILE, else quick)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--figures", default="figures", help="where the accuracy plot goes (default figures/)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                      help="methods to train the student with (default: ce kd aver_kd)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides applied to every demo run")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="train a student with a method preset")
    train.add_argument("preset", help="preset name (see `presets`) or a YAML file")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=0.1")
    train.add_argument("--resume", action="store_true", help="continue the run in its run directory")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="test accuracy of a run's best student or of a pool teacher")
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="a run directory (uses its config.yaml and best_student.pt)")
    target.add_argument("--teacher", help="a teacher-pool entry name")
    evaluate.add_argument("--dataset", help="dataset for --teacher (default: the teacher's own)")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=_cmd_eval)

    teachers = sub.add_parser("teachers", help="the teacher pool").add_subparsers(metavar="ACTION")
    t_train = teachers.add_parser("train", help="train teachers with different seeds into the pool")
    t_train.add_argument("--arch", required=True)
    t_train.add_argument("--dataset", default="fashion_mnist_mini")
    t_train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t_train.add_argument("--epochs", type=int, default=30)
    t_train.add_argument("--lr", type=float, default=0.05)
    t_train.add_argument("--batch-size", type=int, default=64)
    t_train.add_argument("--device", default="auto")
    t_train.add_argument("--out", default="runs", help="where the teachers' training runs are logged")
    t_train.set_defaults(func=_cmd_teachers_train)
    t_list = teachers.add_parser("list", help="list the pool's teachers")
    t_list.add_argument("--json", action="store_true")
    t_list.set_defaults(func=_cmd_teachers_list)
    t_import = teachers.add_parser("import", help="import a RepDistiller/mdistiller checkpoint")
    t_import.add_argument("path")
    t_import.add_argument("--arch", required=True)
    t_import.add_argument("--dataset", default="cifar100")
    t_import.add_argument("--name")
    t_import.add_argument("--num-classes", type=int, default=None)
    t_import.set_defaults(func=_cmd_teachers_import)

    bench = sub.add_parser("bench", help="images/second of one multi-teacher distillation step")
    bench.add_argument("--teacher", default="resnet56")
    bench.add_argument("--student", default="resnet20")
    bench.add_argument("--teachers", type=int, default=3, help="number of teachers K")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dataset", default="fashion_mnist_mini")
    bench.add_argument("--num-classes", type=int, default=100, help="classes of the benchmarked models")
    bench.set_defaults(func=_cmd_bench)

    reproduce = sub.add_parser("reproduce", help="run a study row (a paper table row or a comparison): every "
                               "method × seed, then write the results table")
    reproduce.add_argument("study", nargs="?", help="a study row (see --list)")
    reproduce.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.epochs=2")
    reproduce.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)")
    reproduce.add_argument("--methods", nargs="+", default=None, metavar="COLUMN",
                           help="only these columns of the row (default: all)")
    reproduce.add_argument("--out", default="runs/studies", help="where runs and results go (default runs/studies)")
    reproduce.add_argument("--jobs", type=int, default=1,
                           help="runs trained at once, each in its own process (default 1); small models leave a "
                           "GPU mostly idle, so on a GPU try the number of CPU cores")
    reproduce.add_argument("--record-extras", action="store_true",
                           help="also keep each epoch's per-sample extras (teacher weights …) for the figures")
    reproduce.add_argument("--report-only", action="store_true", help="only write the table from finished runs")
    reproduce.add_argument("--figures", default=None, metavar="DIR",
                           help="also draw the study's figures (accuracy, teacher weights, Grad-CAM, cost) into DIR")
    reproduce.add_argument("--list", action="store_true", help="list the study rows")
    reproduce.set_defaults(func=_cmd_reproduce)

    presets = sub.add_parser("presets", help="list the YAML presets")
    presets.set_defaults(func=_cmd_presets)

    visdom = sub.add_parser("visdom", help="start a visdom server on 127.0.0.1 that works offline")
    visdom.add_argument("--port", type=int, default=8097)
    visdom.set_defaults(func=_cmd_visdom)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from mkdlab.demo import DEFAULT_METHODS, run_demo
    from mkdlab.methods.registry import get_method

    methods = args.methods or DEFAULT_METHODS
    for method in methods:
        try:
            get_method(method)
        except ValueError as err:
            raise ConfigError(f"--methods: {err}") from None
    run_demo(profile=args.profile, out=Path(args.out), figures=Path(args.figures), device=args.device,
             overrides=args.overrides, methods=methods)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mkdlab.config import load_config
    from mkdlab.experiment import run_experiment

    config = load_config(args.preset, args.overrides)
    result, _ = run_experiment(config, resume=args.resume)
    print(f"{config.name}: last top-1 {result.last_top1:.2f}%  best top-1 {result.best_top1:.2f}% "
          f"(epoch {result.best_epoch})  in {result.wall_time_s:.0f} s; outputs in {config.run_dir()}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mkdlab.evaluation import evaluate_run, evaluate_teacher

    metrics = evaluate_run(Path(args.run), args.device) if args.run else evaluate_teacher(
        args.teacher, args.dataset, args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_teachers_train(args: argparse.Namespace) -> int:
    from mkdlab.config import load_config
    from mkdlab.experiment import load_teachers
    from mkdlab.teachers import TeacherPool, entry_name

    config = load_config({
        "name": "teachers", "data": {"dataset": args.dataset, "batch_size": args.batch_size},
        "student": args.arch, "method": {"name": "ce"},
        "teachers": {"arch": args.arch, "seeds": args.seeds, "epochs": args.epochs, "lr": args.lr},
        "train": {"device": args.device}, "output": {"dir": args.out},
    })
    pool = TeacherPool()
    load_teachers(config, pool)
    for seed in args.seeds:
        entry = pool.entries()[entry_name(args.arch, args.dataset, seed, args.epochs)]
        print(f"{entry.name}: top-1 {entry.top1:.2f}%  ({pool.root / entry.file})")
    return 0


def _cmd_teachers_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mkdlab.teachers import TeacherPool

    pool = TeacherPool()
    entries = pool.list()
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no teachers in {pool.root} yet; train some with `python -m mkdlab teachers train --arch resnet20`")
    for e in entries:
        top1 = f"{e.top1:6.2f}%" if e.top1 is not None else "     ?"
        print(f"{e.name:40s} {e.arch:12s} {e.dataset:20s} seed {e.seed!s:4s} epochs {e.epochs!s:4s} top-1 {top1}")
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from mkdlab.bench import run_step_benchmark

    run_step_benchmark(teacher=args.teacher, student=args.student, num_teachers=args.teachers,
                       batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                       dataset=args.dataset, num_classes=args.num_classes)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mkdlab.studies import available_studies, load_study, read_records, run_study, write_report

    if args.list or not args.study:
        print("\n".join(available_studies()))
        return 0 if args.list else 2
    row = load_study(args.study, args.overrides)
    if args.methods:
        for label in args.methods:
            row.column(label)
    if args.report_only:
        records = read_records(args.out, row)
    else:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        records = run_study(row, args.seeds, out=args.out, labels=args.methods, jobs=args.jobs,
                            record_extras=args.record_extras)
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


def _cmd_presets(args: argparse.Namespace) -> int:
    from mkdlab.config import available_presets

    print("\n".join(available_presets()))
    return 0


def _cmd_visdom(args: argparse.Namespace) -> int:
    from mkdlab.engine.visdom_server import main as visdom_main

    return int(visdom_main(["--port", str(args.port)]) or 0)
