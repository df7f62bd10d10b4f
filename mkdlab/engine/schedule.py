"""The step learning-rate schedule of the CIFAR recipe (docs/methods.md §2), scaled to any run length."""

from __future__ import annotations

from collections.abc import Sequence


def scale_milestones(milestones: Sequence[int], of: int, total: int) -> list[int]:
    """Milestones given for a run of ``of`` epochs, scaled to ``total`` (rounded half up).

    >>> scale_milestones([150, 180, 210], of=240, total=30)
    [19, 23, 26]
    """
    return [int(m * total / of + 0.5) for m in milestones]


def lr_factor(position: int, milestones: Sequence[int], decay: float = 0.1) -> float:
    """Multiplier of the base lr at ``position`` (0-based epoch, or step for a step budget).

    The lr is multiplied by ``decay`` once for every milestone ``m <= position``: with milestones 150/180/210 of a
    240-epoch run, 0-based epochs 0–149 use the base lr, 150–179 a tenth of it, and so on. This equals RepDistiller's
    ``epoch > milestone`` test on 1-based epochs.
    """
    return decay ** sum(1 for m in milestones if position >= m)
