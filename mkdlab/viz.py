"""Plots shared by the notebooks, the demo and the reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def plot_accuracy_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], *, metric: str = "test_top1",
                         ax: Axes | None = None, title: str = "Test accuracy") -> Axes:
    """One line per run of ``metric`` against the epoch, marking the last epoch (●) and the best epoch (★).

    ``histories`` maps a run's label to its history rows (``FitResult.history`` or ``history.jsonl``).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for label, rows in histories.items():
        points = [(row["epoch"], row[metric]) for row in rows if metric in row]
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        (line,) = ax.plot(epochs, values, label=f"{label} (last {values[-1]:.2f}, best {max(values):.2f})")
        best = max(range(len(values)), key=values.__getitem__)
        ax.plot(epochs[-1], values[-1], "o", color=line.get_color())
        ax.plot(epochs[best], values[best], "*", markersize=12, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}  (● last epoch, ★ best epoch)")
    ax.grid(alpha=0.3)
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
