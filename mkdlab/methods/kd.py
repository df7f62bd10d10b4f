"""Vanilla knowledge distillation (Hinton et al., 2015) and its equal-weight multi-teacher form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mkdlab.losses import kd_loss
from mkdlab.losses.multi_teacher import weighted_kd_loss
from mkdlab.losses.weightings import average_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class KDParams:
    """Coefficients of RepDistiller's KD script (methods.md §4.1): γ = 0.1 for CE, α = 0.9 for KD, T = 4."""

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


@register_method("kd")
class KD(Distiller):
    r"""Single-teacher KD: :math:`\mathcal L = \gamma\,\mathrm{CE}(z^s,y) + \alpha\,\frac1B\sum_b T^2\,
    \mathrm{KL}(p^t_{T,b}\,\|\,p^s_{T,b})` (methods.md §4.1)."""

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


@dataclass(frozen=True)
class AverKDParams:
    """AVER-KD as run in the CA-MKD repository (methods.md §4.5): γ = α = 1, T = 4."""

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0


@register_method("aver_kd")
class AverKD(Distiller):
    r"""Equal-weight multi-teacher KD, averaging the K losses (methods.md §4.5):

    .. math:: \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1K\sum_k \frac1B\sum_b \ell^{KL}_T(z^s, z^k)_b

    Its gradient equals KD towards the averaged teacher distribution (methods.md §1). Logs the (uniform) teacher
    weights so it plots like the weighting methods.
    """

    Params = AverKDParams
    teachers_required = "many"
    needs_drop_last = True

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher_logits = self.teacher_logits(batch.images)
        logits = self.student(batch.images)
        weights = average_weights(teacher_logits)
        kd = weighted_kd_loss(logits, teacher_logits, weights, p.temperature)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd},
            {"teacher_weights": weights},
        )
