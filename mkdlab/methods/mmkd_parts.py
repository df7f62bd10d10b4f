"""MMKD's building blocks outside the method: what the teachers contribute to a batch and the student (with its
embeds) as one module for functional calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mkdlab.losses.features import resize_to

#: the student's and teachers' tap the feature terms use (MMKD's ``feat[-2]``).
TAP = "penultimate_mmkd"


@dataclass
class TeacherTargets:
    """What the teachers contribute to a batch: logits K×B×C, their tap maps (one per teacher), these maps pooled
    to the matching size and their B×B Gram matrices (from the unpooled maps). Constants."""

    logits: Tensor
    raw_maps: list[Tensor]
    maps: list[Tensor]
    grams: list[Tensor]


class StudentView(nn.Module):
    """The student and the embeds under the MMKD module's parameter names (``student.*``, ``embeds.*``), so that
    :func:`torch.func.functional_call` can run them on substituted parameters. Built on demand, never
    registered (it holds no state of its own)."""

    def __init__(self, student: nn.Module, embeds: nn.ModuleList, sizes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.student = student
        self.embeds = embeds
        self.sizes = list(sizes)

    def forward(self, images: Tensor, embed: bool = True) -> tuple[Tensor, Tensor, list[Tensor]]:
        r"""Student logits, its tap map and (with ``embed``) :math:`\mathrm{Embed}_k` of the map pooled to each
        teacher's matching size."""
        maps = self.student.forward_features(images)
        feature_map = maps[self.student.taps[TAP]]
        embedded = [e(resize_to(feature_map, s)) for e, s in zip(self.embeds, self.sizes, strict=True)] if embed \
            else []
        return maps["logits"], feature_map, embedded
