"""Plots shared by the notebooks, the demo and the reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def line_styles(count: int) -> list[tuple[Any, str]]:
    """``count`` distinct (colour, line style) pairs: solid lines in the ten ``tab10`` colours up to ten curves; beyond
    that the twenty ``tab20`` colours, and the line style cycles through solid, dashed, dash-dot and dotted, so that
    no two curves look alike (matplotlib's default cycle repeats its ten colours)."""
    if count <= 10:
        return [(plt.get_cmap("tab10")(i), "-") for i in range(count)]
    palette, dashes = plt.get_cmap("tab20"), ("-", "--", "-.", ":")
    return [(palette(i % 20), dashes[i % len(dashes)]) for i in range(count)]


def plot_accuracy_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], *, metric: str = "test_top1",
                         ax: Axes | None = None, title: str = "Test accuracy") -> Axes:
    """One line per run of ``metric`` against the epoch (integer ticks), marking the last epoch with an open
    circle and the best epoch with a star (both visible where they coincide).

    ``histories`` maps a run's label to its history rows (``FitResult.history`` or ``history.jsonl``).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    seen: set[int] = set()
    styles = line_styles(len(histories))
    for (label, rows), (color, linestyle) in zip(histories.items(), styles, strict=True):
        points = [(row["epoch"], row[metric]) for row in rows if metric in row]
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        seen.update(epochs)
        (line,) = ax.plot(epochs, values, color=color, linestyle=linestyle,
                          label=f"{label} (last {values[-1]:.2f}, best {max(values):.2f})")
        best = max(range(len(values)), key=values.__getitem__)
        ax.plot(epochs[-1], values[-1], "o", markersize=13, markerfacecolor="none", markeredgewidth=1.5,
                color=line.get_color())
        ax.plot(epochs[best], values[best], "*", markersize=11, color=line.get_color())
    if 0 < len(seen) <= 20:
        ax.set_xticks(sorted(seen))  # every epoch, also when there is only one
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}  (○ last epoch, ★ best epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_mean_teacher_weights(weights: Mapping[str, torch.Tensor], *, teacher_names: Sequence[str] | None = None,
                              ax: Axes | None = None, title: str = "Teacher weights, last epoch") -> Axes:
    """Grouped bars: each method's mean per-sample weight of each teacher (N×K weights, rows scaled to sum 1 so
    that weightings of different totals compare), with the samples' standard deviation as error bars."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(weights), 1)
    for i, (method, values) in enumerate(weights.items()):
        shares = values.detach().float().cpu()
        shares = shares / shares.sum(1, keepdim=True).clamp_min(1e-12)
        positions = torch.arange(shares.shape[1]) + (i - (len(weights) - 1) / 2) * width
        ax.bar(positions, shares.mean(0), width, yerr=shares.std(0) if len(shares) > 1 else None, capsize=2,
               label=method)
    count = next(iter(weights.values())).shape[1] if weights else 0
    ax.set_xticks(range(count), _teacher_names(count, teacher_names))
    ax.axhline(1 / count if count else 0, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("mean share of the weight")
    ax.set_title(title + (" (- - equal weights)" if count else ": no multi-teacher method"), fontsize=10)
    ax.legend(fontsize=8)
    return ax


def image_grid(images: torch.Tensor, labels: Sequence[int], class_names: Sequence[str], *, mean: Sequence[float],
               std: Sequence[float], columns: int = 8) -> Figure:
    """A grid of normalised images (B×C×H×W) with their class names, de-normalised for display."""
    images = images.detach().float().cpu() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(
        1, -1, 1, 1)
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        picture = image.clamp(0, 1).permute(1, 2, 0).numpy()
        if picture.shape[-1] == 1:
            ax.imshow(picture[..., 0], cmap="gray")
        else:
            ax.imshow(picture)
        ax.set_title(class_names[int(label)], fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _teacher_names(count: int, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"teacher {k}" for k in range(count)]


def plot_weight_distributions(weights: torch.Tensor, *, teacher_names: Sequence[str] | None = None,
                              kind: str = "violin", ax: Axes | None = None, title: str = "Teacher weights") -> Axes:
    """Distribution of each teacher's per-sample weight (N×K weights): violins (``kind="violin"``) or histograms."""
    import pandas as pd
    import seaborn as sns

    weights = weights.detach().float().cpu()
    names = _teacher_names(weights.shape[1], teacher_names)
    frame = pd.DataFrame({"weight": weights.flatten().numpy(),
                          "teacher": [names[k] for _ in range(weights.shape[0]) for k in range(weights.shape[1])]})
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    if kind == "violin":
        sns.violinplot(data=frame, x="teacher", y="weight", hue="teacher", cut=0, inner="quartile", ax=ax)
    elif kind == "hist":
        sns.histplot(data=frame, x="weight", hue="teacher", element="step", stat="density", common_norm=False, ax=ax)
    else:
        raise ValueError(f"kind must be 'violin' or 'hist', not {kind!r}")
    ax.set_title(title)
    return ax


def plot_class_weight_heatmap(weights: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                              teacher_names: Sequence[str] | None = None, ax: Axes | None = None,
                              title: str = "Mean teacher weight per class") -> Axes:
    """Heat map of the mean weight of each teacher (rows) over the samples of each class (columns)."""
    import seaborn as sns

    weights, labels = weights.detach().float().cpu(), labels.detach().cpu()
    means = torch.stack([weights[labels == c].mean(0) if (labels == c).any() else torch.full((weights.shape[1],),
                                                                                             float("nan"))
                         for c in range(len(class_names))], dim=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names)), 0.6 * weights.shape[1] + 1.5))
    sns.heatmap(means.numpy(), annot=len(class_names) <= 20, fmt=".2f", cmap="magma", ax=ax,
                xticklabels=list(class_names), yticklabels=_teacher_names(weights.shape[1], teacher_names))
    ax.set_title(title)
    return ax


def plot_weight_vs_correctness(weights: torch.Tensor, teacher_correct: torch.Tensor, *,
                               teacher_names: Sequence[str] | None = None, ax: Axes | None = None,
                               title: str = "Weight when the teacher is right or wrong") -> Axes:
    """Box plots of each teacher's weight, split by whether that teacher classified the sample correctly."""
    import pandas as pd
    import seaborn as sns

    weights, correct = weights.detach().float().cpu(), teacher_correct.detach().bool().cpu()
    names = _teacher_names(weights.shape[1], teacher_names)
    frame = pd.DataFrame({
        "weight": weights.flatten().numpy(),
        "teacher": [names[k] for _ in range(weights.shape[0]) for k in range(weights.shape[1])],
        "teacher is": ["right" if c else "wrong" for c in correct.flatten().tolist()],
    })
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    sns.boxplot(data=frame, x="teacher", y="weight", hue="teacher is", hue_order=["right", "wrong"], ax=ax,
                fliersize=1)
    ax.set_title(title)
    return ax
