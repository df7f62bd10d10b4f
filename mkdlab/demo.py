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

from mkdlab.config import ExperimentConfig, MethodConfig, load_config
from mkdlab.data import make_loaders
from mkdlab.engine.trainer import resolve_device
from mkdlab.evaluation import ensemble_accuracy
from mkdlab.experiment import load_teachers, run_experiment
from mkdlab.profiles import Profile, current_profile
from mkdlab.teachers import TeacherPool, entry_name
from mkdlab.viz import plot_accuracy_curves, save_figure

#: epochs (and step caps for the smoke profile) of each demo profile.
PROFILE_OVERRIDES: dict[Profile, list[str]] = {
    Profile.SMOKE: ["teachers.epochs=1", "teachers.max_steps=8", "train.epochs=2", "train.max_steps=8"],
    Profile.QUICK: [],
    Profile.FULL: ["teachers.epochs=30", "train.epochs=30"],
}

#: the student runs: label, method, teacher selection ("best" or "all").
STUDENT_RUNS = (
    ("CE only", "ce", None),
    ("KD (best teacher)", "kd", "best"),
    ("AVER-KD (3 teachers)", "aver_kd", "all"),
)


@dataclass
class DemoRow:
    """One line of the demo's results table."""

    model: str
    role: str
    last_top1: float
    best_top1: float | None = None
    seconds: float | None = None


def demo_config(profile: Profile, device: str = "auto", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The demo's base config for ``profile``, with user overrides applied last."""
    return load_config("demo", [*PROFILE_OVERRIDES[profile], f"train.device={device}", *overrides])


def run_demo(profile: str | Profile | None = None, out: Path = Path("runs/demo"), figures: Path = Path("figures"),
             device: str = "auto", overrides: Sequence[str] = (), pool: TeacherPool | None = None) -> list[DemoRow]:
    """Run the demo and print its table; returns the rows."""
    profile = Profile(profile) if profile is not None else current_profile()
    base = demo_config(profile, device, overrides)
    base = dataclasses.replace(base, output=dataclasses.replace(base.output, dir=str(out / profile.value)))
    pool = pool or TeacherPool()
    started = time.perf_counter()
    teacher_rows, best_name = _teachers(base, pool)
    rows = list(teacher_rows)
    histories: dict[str, list[dict[str, Any]]] = {}
    for label, method, teachers in STUDENT_RUNS:
        config = _student_config(base, label, method, teachers, best_name)
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


def _teachers(base: ExperimentConfig, pool: TeacherPool) -> tuple[list[DemoRow], str]:
    assert base.teachers is not None
    teachers = load_teachers(base, pool)
    names = [entry_name(arch, base.data.dataset, seed, base.teachers.epochs, base.teachers.max_steps)
             for arch, seed in zip(base.teachers.architectures(), base.teachers.seeds, strict=True)]
    entries = pool.entries()
    rows = [DemoRow(name, "teacher", entries[name].top1 or float("nan")) for name in names]
    device = resolve_device(base.train.device)
    _, test_loader = make_loaders(base.data.dataset, 256, device=device, root=base.data.root)
    rows.append(DemoRow(f"ensemble of {len(teachers)} (mean of softmax)", "ensemble",
                        ensemble_accuracy(teachers, test_loader, device)))
    best = max(names, key=lambda name: entries[name].top1 or 0.0)
    return rows, best


def _student_config(base: ExperimentConfig, label: str, method: str, teachers: str | None,
                    best_name: str) -> ExperimentConfig:
    name = method
    if teachers is None:
        return dataclasses.replace(base, name=name, teachers=None, method=MethodConfig(method))
    assert base.teachers is not None
    if teachers == "best":
        selected = dataclasses.replace(base.teachers, entries=[best_name])
    else:
        selected = base.teachers
    return dataclasses.replace(base, name=name, teachers=selected, method=MethodConfig(method))


def format_table(rows: Sequence[DemoRow]) -> str:
    """The results as an aligned text table (top-1 in %)."""
    lines = [f"{'model':46s} {'role':9s} {'last top-1':>10s} {'best top-1':>10s} {'time':>8s}"]
    for row in rows:
        best = f"{row.best_top1:10.2f}" if row.best_top1 is not None else f"{'':10s}"
        seconds = f"{row.seconds:7.0f}s" if row.seconds is not None else f"{'':8s}"
        lines.append(f"{row.model:46s} {row.role:9s} {row.last_top1:10.2f} {best} {seconds}")
    return "\n".join(lines)
