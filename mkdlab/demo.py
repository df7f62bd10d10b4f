"""The main job, ``python -m mkdlab demo``: teachers, then students trained three ways, compared in one table.

On the embedded default (the Fashion-MNIST subset shipped with mkdlab, CPU) it loads three resnet20 teachers with
different seeds from the teacher pool (in the quick profile: the ones shipped in the package; ``train_teachers``
trains them into ``$MKDLAB_HOME`` instead), then trains the same resnet8 student with CE only, KD from the best
teacher and CA-MKD from all three (other methods with ``methods``). It prints the teachers', the ensemble's and
the students' accuracies and saves the accuracy curves beside the teacher weights each multi-teacher student gave
its teachers to ``figures/demo_accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from torch import Tensor

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
from mkdlab.viz import plot_accuracy_curves, plot_mean_teacher_weights, save_figure

#: the methods the demo trains by default, one of each kind (no teacher, one, several): what fits its 5-minute budget
#: on 2 CPU cores (README, Quick start: there a 3-teacher student's epoch costs about three CE epochs).
DEFAULT_METHODS = ("ce", "kd", "ca_mkd")


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
             methods: Sequence[str] = DEFAULT_METHODS, train_teachers: bool = False) -> list[DemoRow]:
    """Run the demo and print its table; returns the rows.

    Each of ``methods`` trains the same student: a method without teachers alone, a single-teacher method from
    the best teacher, a multi-teacher method from all of them. With ``train_teachers`` the shipped teachers are
    left out of the pool, so the teachers are trained (once: they are stored in ``$MKDLAB_HOME``).
    """
    profile = Profile(profile) if profile is not None else current_profile()
    base = lesson_config(profile, device, overrides)
    base = dataclasses.replace(base, output=dataclasses.replace(base.output, dir=str(out / profile.value)))
    pool = pool or (TeacherPool(shipped=None) if train_teachers else TeacherPool())
    started = time.perf_counter()
    teacher_rows, best_name = teacher_rows_and_best(base, pool)
    rows = list(teacher_rows)
    histories: dict[str, list[dict[str, Any]]] = {}
    weights: dict[str, Tensor] = {}
    for method in methods:
        required = method_class(method).teachers_required
        label = {"none": f"{method} (no teacher)", "one": f"{method} (best teacher)",
                 "many": f"{method} ({len(base.teachers.seeds)} teachers)"}[required]
        config = with_method(base, method, teacher=best_name)
        result, _ = run_experiment(config, pool=pool, verbose=True, record_extras=required == "many")
        histories[label] = result.history
        if result.extras and "teacher_weights" in result.extras[-1]:
            weights[method] = result.extras[-1]["teacher_weights"]
        rows.append(DemoRow(f"{base.student} · {label}", "student", result.last_top1, result.best_top1,
                            result.wall_time_s))
    figure = save_demo_figure(histories, weights, [f"seed {s}" for s in base.teachers.seeds],
                              f"resnet8 on {base.data.dataset} ({profile.value} profile)", figures)
    print(format_table(rows))
    print(f"\naccuracy curves: {figure}   runs: {out / profile.value}   total {time.perf_counter() - started:.0f} s")
    return rows


def save_demo_figure(histories: dict[str, list[dict[str, Any]]], weights: dict[str, Tensor],
                     teacher_names: Sequence[str], title: str, figures: Path) -> Path:
    """The accuracy curves and, beside them, the mean weight each multi-teacher student gave each teacher."""
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(3, 2))
    plot_accuracy_curves(histories, ax=curves, title=title)
    plot_mean_teacher_weights(weights, teacher_names=teacher_names, ax=bars)
    path = save_figure(fig, figures / "demo_accuracy.png")
    plt.close(fig)
    return path


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
