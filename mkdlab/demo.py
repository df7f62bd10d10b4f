"""The main job, ``python -m mkdlab demo``: teachers, then students trained three ways, compared in one table.

On the embedded default (the Fashion-MNIST subset shipped with mkdlab, CPU) it trains (or loads from the teacher
pool) three resnet20 teachers with different seeds, then trains the same resnet8 student with CE only, with KD from
the best teacher and with equal-weight multi-teacher KD (AVER-KD). It prints the teachers', the ensemble's and the
students' accuracies and saves the accuracy curves to ``figures/demo_accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from mkdlab.config import ExperimentConfig
from mkdlab.data import make_loaders
from mkdlab.engine.device import resolve_device
from mkdlab.evaluation import ensemble_accuracy
from mkdlab.experiment import (
    best_teacher,
    lesson_config,
    load_teachers,
    method_class,
    run_experiment,
    teacher_entry_names,
    with_method,
)
from mkdlab.profiles import Profile, current_profile
from mkdlab.teachers import TeacherPool
from mkdlab.viz import plot_accuracy_curves, save_figure

#: the methods the demo trains by default: what fits its 10-minute budget on 2 CPU cores.
DEFAULT_METHODS = ("ce", "kd", "aver_kd")


@dataclass
class DemoRow:
    """One line of the demo's results table."""

    model: str
    role: str
    last_top1: float
    best_top1: float | None = None
    seconds: float | None = None


def run_demo(profile: str | Profile | None = None, out: Path = Path("runs/demo"), figures: Path = Path("figures"),
             device: str = "auto", overrides: Sequence[str] = (), pool: TeacherPool | None = None,
             methods: Sequence[str] = DEFAULT_METHODS) -> list[DemoRow]:
    """Run the demo and print its table; returns the rows.

    Each of ``methods`` trains the same student: a method without teachers alone, a single-teacher method from
    the best teacher, a multi-teacher method from all of them.
    """
    profile = Profile(profile) if profile is not None else current_profile()
    base = lesson_config(profile, device, overrides)
    base = dataclasses.replace(base, output=dataclasses.replace(base.output, dir=str(out / profile.value)))
    pool = pool or TeacherPool()
    started = time.perf_counter()
    teacher_rows, best_name = teacher_rows_and_best(base, pool)
    rows = list(teacher_rows)
    histories: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        required = method_class(method).teachers_required
        label = {"none": f"{method} (no teacher)", "one": f"{method} (best teacher)",
                 "many": f"{method} ({len(base.teachers.seeds)} teachers)"}[required]
        config = with_method(base, method, teacher=best_name)
        result, _ = run_experiment(config, pool=pool, verbose=True)
        histories[label] = result.history
        rows.append(DemoRow(f"{base.student} · {label}", "student", result.last_top1, result.best_top1,
                            result.wall_time_s))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plot_accuracy_curves(histories, ax=ax, title=f"resnet8 on {base.data.dataset} ({profile.value} profile)")
    figure = save_figure(fig, figures / "demo_accuracy.png")
    plt.close(fig)
    print(format_table(rows))
    print(f"\naccuracy curves: {figure}   runs: {out / profile.value}   total {time.perf_counter() - started:.0f} s")
    return rows


def teacher_rows_and_best(base: ExperimentConfig, pool: TeacherPool) -> tuple[list[DemoRow], str]:
    """Load (or train) the teachers; their rows and the ensemble's for the table, and the best teacher's name."""
    teachers = load_teachers(base, pool)
    names = teacher_entry_names(base)
    entries = pool.entries()
    rows = [DemoRow(name, "teacher", entries[name].top1 or float("nan")) for name in names]
    device = resolve_device(base.train.device)
    _, test_loader = make_loaders(base.data.dataset, 256, device=device, root=base.data.root)
    rows.append(DemoRow(f"ensemble of {len(teachers)} (mean of softmax)", "ensemble",
                        ensemble_accuracy(teachers, test_loader, device)))
    return rows, best_teacher(base, pool)


def format_table(rows: Sequence[DemoRow]) -> str:
    """The results as an aligned text table (top-1 in %)."""
    lines = [f"{'model':46s} {'role':9s} {'last top-1':>10s} {'best top-1':>10s} {'time':>8s}"]
    for row in rows:
        best = f"{row.best_top1:10.2f}" if row.best_top1 is not None else f"{'':10s}"
        seconds = f"{row.seconds:7.0f}s" if row.seconds is not None else f"{'':8s}"
        lines.append(f"{row.model:46s} {row.role:9s} {row.last_top1:10.2f} {best} {seconds}")
    return "\n".join(lines)
