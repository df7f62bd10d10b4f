"""FitNet (Romero et al., 2015) in RepDistiller's one-stage form: CE plus a hint loss through a learned regressor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mkdlab.losses.divergences import kd_loss
from mkdlab.losses.features import hint_loss
from mkdlab.methods.adapters import ConvReg
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method
from mkdlab.models.summary import probe_shapes


@dataclass(frozen=True)
class FitNetParams:
    """RepDistiller/mdistiller FitNet (docs/methods.md §4.2): hint weight β = 100, CE weight 1, no KD term."""

    hint_weight: float = 100.0
    ce_weight: float = 1.0
    #: RepDistiller's ``-a``; 0 (no KD term) in the FitNet script. The ``"kd"`` term is added only when > 0.
    kd_weight: float = 0.0
    temperature: float = 4.0


@register_method("fitnet")
class FitNet(Distiller):
    r"""FitNet hints, trained jointly in one stage (docs/methods.md §4.2):

    .. math::
        \mathcal L = \gamma\,\mathrm{CE}(z^s,y) + \beta\,\mathrm{MSE}_{\mathrm{mean}}\big(r(F^s_2), F^t_2\big)
            \;[+\;\alpha\,\mathrm{KD}_T]

    :math:`F_2` is ``taps["hint"]`` (RepDistiller's ``feat[2]``, post-ReLU) of each network and :math:`r` a
    :class:`~mkdlab.methods.adapters.ConvReg` sized from the two maps; the regressor is a submodule, so it is
    optimised with the student by the same SGD. The original FitNets paper trains in two stages (hint pre-training
    of the lower student layers, then KD); like RepDistiller and mdistiller, mkdlab uses the one-stage joint loss.
    """

    Params = FitNetParams
    teachers_required = "one"

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module] = (), params: FitNetParams | None = None
                 ) -> None:
        super().__init__(student, teachers, params)
        teacher = self.teachers[0]
        self.student_tap: str = student.taps["hint"]
        self.teacher_tap: str = teacher.taps["hint"]
        self.regressor = ConvReg(probe_shapes(student)[self.student_tap], probe_shapes(teacher)[self.teacher_tap])

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher = self.teacher_features(batch.images)[0]
        feats = self.student.forward_features(batch.images)
        logits = feats["logits"]
        losses = {
            "ce": p.ce_weight * F.cross_entropy(logits, batch.labels),
            "hint": p.hint_weight * hint_loss(self.regressor(feats[self.student_tap]), teacher[self.teacher_tap]),
        }
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(logits, teacher["logits"], p.temperature)
        return StepOutput(logits, losses, {"teacher_weights": torch.ones(logits.shape[0], 1, device=logits.device)})
