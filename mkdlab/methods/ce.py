"""The supervised baseline: cross-entropy only ("CE only" rows of every paper; also how teachers are trained)."""

from __future__ import annotations

import torch.nn.functional as F

from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method


@register_method("ce")
class CrossEntropy(Distiller):
    r"""Plain training of the student: :math:`\mathcal L = \mathrm{CE}(z^s, y)`."""

    teachers_required = "none"

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        logits = self.student(batch.images)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, batch.labels)})
