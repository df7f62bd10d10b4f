"""Vanilla knowledge distillation (Hinton et al., 2015); its equal-weight multi-teacher form, AVER-KD, is a
weighted KD (:mod:`mkdlab.methods.weighted_kd`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mkdlab.losses import kd_loss
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class KDParams:
    """Coefficients of RepDistiller's KD script (docs/methods.md §4.1): γ = 0.1 for CE, α = 0.9 for KD, T = 4."""

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


@register_method("kd")
class KD(Distiller):
    r"""Single-teacher KD: :math:`\mathcal L = \gamma\,\mathrm{CE}(z^s,y) + \alpha\,\frac1B\sum_b T^2\,
    \mathrm{KL}(p^t_{T,b}\,\|\,p^s_{T,b})` (docs/methods.md §4.1)."""

    Params = KDParams
    teachers_required = "one"

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher_logits = self.teacher_logits(batch.images)[0]
        logits = self.student(batch.images)
        return StepOutput(
            logits,
            {
                "ce": p.ce_weight * F.cross_entropy(logits, batch.labels),
                "kd": p.kd_weight * kd_loss(logits, teacher_logits, p.temperature),
            },
            {"teacher_weights": torch.ones(logits.shape[0], 1, device=logits.device)},
        )
