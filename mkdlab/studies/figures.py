"""The figures of a finished study: accuracy, teacher weights, Grad-CAM across methods and cost.

Notebook 09 draws them inline; ``python -m mkdlab reproduce <row> --figures DIR`` writes them as PNG files (the
README's figures come from there). Every figure reads what the runs left on disk: ``history.jsonl``, the recorded
extras (``--record-extras``) and ``best_student.pt`` of one seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mkdlab.engine.loggers import read_history
from mkdlab.storage import load_safely
from mkdlab.studies.records import RunRecord, in_column_order
from mkdlab.studies.report import BASELINE, ColumnSummary, summarize
from mkdlab.studies.spec import StudyRow, run_dir
from mkdlab.viz import plot_accuracy_curves, plot_weight_distributions, save_figure

#: the test-set classes whose first image the Grad-CAM grid shows (Fashion-MNIST: T-shirt, dress, sneaker, boot).
CAM_CLASSES = (0, 3, 7, 9)


def plot_accuracy(row: StudyRow, summaries: Sequence[ColumnSummary], out: str | Path, seed: int = 0) -> Figure:
    """Test accuracy per epoch of every column (student seed ``seed``) beside the best top-1 mean ± std bars."""
    fig, (ax_curves, ax_bars) = plt.subplots(1, 2, figsize=(14, 4.5))
    histories = {s.label: read_history(run_dir(out, row, s.label, seed)) for s in summaries}
    plot_accuracy_curves(histories, ax=ax_curves, title=f"seed {seed}")
    ax_curves.legend(fontsize=7, ncol=2)
    plot_best_bars(summaries, ax_bars)
    fig.tight_layout()
    return fig


def plot_best_bars(summaries: Sequence[ColumnSummary], ax: Axes) -> Axes:
    """The best top-1 mean ± std of every column as bars on an axis that starts at 0 (bar lengths compare), each
    bar labelled with its value so that differences of a few tenths stay readable; the CE-only mean as a line."""
    labels = [s.label for s in summaries]
    bars = ax.bar(labels, [s.best_mean for s in summaries], color="tab:blue", capsize=3,
                  yerr=[0.0 if s.seeds < 2 else s.best_std for s in summaries])
    ax.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90, padding=3)
    baseline = [s.best_mean for s in summaries if s.label == BASELINE]
    if baseline:
        ax.axhline(baseline[0], color="k", ls="--", lw=1, label="CE only")
        ax.legend(loc="lower right")
    ax.set_ylim(0, max(100.0, max(s.best_mean for s in summaries) + 12))
    ax.set_ylabel(f"best top-1 (%), mean ± std of {max(s.seeds for s in summaries)} seeds")
    ax.tick_params(axis="x", rotation=60)
    return ax


def last_extras(row: StudyRow, label: str, out: str | Path, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """The per-sample extras of the last recorded epoch of one run, or ``None`` when none were recorded."""
    files = sorted((run_dir(out, row, label, seed) / "extras").glob("epoch_*.pt"))
    return load_safely(files[-1]) if files else None


def plot_teacher_weights(row: StudyRow, out: str | Path, seed: int = 0,
                         labels: Sequence[str] | None = None) -> Figure | None:
    """Violins of each teacher's per-sample weight in the last epoch, one panel per weighting method.

    A column takes part when its run recorded ``teacher_weights`` that vary between samples or teachers (not the
    fixed 1/K of AVER-KD, nor the 1 of a single-teacher method); ``None`` when no run did.
    """
    weights = {}
    for label in labels or [c.label for c in row.columns]:
        extras = last_extras(row, label, out, seed)
        if extras is not None and "teacher_weights" in extras and extras["teacher_weights"].float().std() > 1e-4:
            weights[label] = extras["teacher_weights"]
    if not weights:
        return None
    teachers = row.base.teachers
    names = ([f"{a} s{s}" for a, s in zip(teachers.architectures(), teachers.seeds, strict=True)]
             if teachers is not None and not teachers.entries else None)
    fig, axes = plt.subplots(1, len(weights), figsize=(2.6 * len(weights), 3.4), sharey=True, squeeze=False)
    for ax, (label, value) in zip(axes[0], weights.items(), strict=True):
        plot_weight_distributions(value, teacher_names=names, ax=ax, title=label)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def plot_cams(row: StudyRow, out: str | Path, seed: int = 0, labels: Sequence[str] | None = None,
              classes: Sequence[int] = CAM_CLASSES) -> Figure:
    """Grad-CAM of every column's best student (seed ``seed``) for the first test image of each of ``classes``."""
    from mkdlab.cam import grad_cam, plot_cam_grid
    from mkdlab.data import dataset_info, get_dataset, make_loaders
    from mkdlab.evaluation import load_run_student

    dataset = row.base.data.dataset
    info = dataset_info(dataset)
    class_names = get_dataset(dataset, train=False, transform=None, root=row.base.data.root).classes
    _, test_loader = make_loaders(dataset, 512, device="cpu", root=row.base.data.root)
    images, targets = next(iter(test_loader))
    picked = torch.stack([(targets == c).nonzero()[0, 0] for c in classes])
    images, targets = images[picked], targets[picked]
    maps = {label: grad_cam(load_run_student(run_dir(out, row, label, seed))[0], images, targets)
            for label in labels or [c.label for c in row.columns]}
    return plot_cam_grid(images, maps, labels=targets.tolist(), class_names=class_names, mean=info.mean,
                         std=info.std, cell_size=1.1)


def plot_cost(summaries: Sequence[ColumnSummary], records: Sequence[RunRecord]) -> Figure:
    """Training seconds per epoch of each column (mean over seeds), with its images/second, as the runs ran."""
    epochs = {r.label: r.epochs for r in records}
    fig, ax = plt.subplots(figsize=(10, 3.5))
    labels = [s.label for s in summaries]
    ax.bar(labels, [s.train_time_s / epochs[s.label] for s in summaries], color="tab:orange")
    for i, s in enumerate(summaries):
        ax.text(i, 0, f"{s.images_per_s:.0f}\nimg/s", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("seconds per epoch")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def write_figures(row: StudyRow, records: Sequence[RunRecord], out: str | Path, figures: str | Path,
                  seed: int = 0) -> list[Path]:
    """Every figure above, for the columns of ``records``, as ``<figures>/<row>_{accuracy,weights,gradcam,cost}.png``;
    returns the paths."""
    summaries = summarize(in_column_order(row, records), row.paper)
    labels = [s.label for s in summaries]
    drawn = {"accuracy": plot_accuracy(row, summaries, out, seed),
             "weights": plot_teacher_weights(row, out, seed, labels),
             "gradcam": plot_cams(row, out, seed, labels),
             "cost": plot_cost(summaries, records)}
    paths = []
    for name, fig in drawn.items():
        if fig is not None:
            paths.append(save_figure(fig, Path(figures) / f"{row.name}_{name}.png"))
            plt.close(fig)
    return paths
