"""Attention transfer (Zagoruyko & Komodakis, 2017): match the normalised spatial attention of every stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mkdlab.losses.features import at_loss
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class ATParams:
    """RepDistiller/mdistiller AT (docs/methods.md §4.3): β = 1000, CE weight 1, p = 2, no KD term."""

    at_weight: float = 1000.0
    ce_weight: float = 1.0
    p: float = 2.0


@register_method("at")
class AT(Distiller):
    r"""Attention transfer on every stage output (docs/methods.md §4.3):

    .. math::
        \mathcal L = \gamma\,\mathrm{CE}(z^s,y) + \beta\sum_\ell \frac{1}{B\,HW}\sum_{b,i}
            \big(a(F^s_\ell)_{b,i} - a(F^t_\ell)_{b,i}\big)^2

    with :math:`a` the L2-normalised channel mean of :math:`F^p` (:func:`~mkdlab.losses.features.attention_map`).
    The maps are ``stage_names`` (RepDistiller's ``feat[1:-1]``) of student and teacher, paired in order; the
    larger map of a pair is average-pooled to the smaller size. No adapter: channels are averaged away.
    """

    Params = ATParams
    teachers_required = "one"

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module] = (), params: ATParams | None = None
                 ) -> None:
        super().__init__(student, teachers, params)
        teacher = self.teachers[0]
        self.student_stages: tuple[str, ...] = tuple(student.stage_names)
        self.teacher_stages: tuple[str, ...] = tuple(teacher.stage_names)
        if len(self.student_stages) != len(self.teacher_stages):
            raise ValueError(
                f"AT pairs the student's stage maps with the teacher's in order, but the stage lists differ: "
                f"student {type(student).__name__} has {len(self.student_stages)} {self.student_stages}, teacher "
                f"{type(teacher).__name__} has {len(self.teacher_stages)} {self.teacher_stages}"
            )

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher = self.teacher_features(batch.images)[0]
        feats = self.student.forward_features(batch.images)
        logits = feats["logits"]
        at = at_loss([feats[n] for n in self.student_stages], [teacher[n] for n in self.teacher_stages], p.p)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "at": p.at_weight * at},
            {"teacher_weights": torch.ones(logits.shape[0], 1, device=logits.device)},
        )
