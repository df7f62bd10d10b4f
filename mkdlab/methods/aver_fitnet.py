"""AVER-FitNet ("FitNet-MKD"): equal-weight multi-teacher KD plus one FitNet hint per teacher (docs/methods.md §4.6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mkdlab.losses import average_weights, weighted_kd_loss
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.feature_terms import (
    feature_term_active,
    hint_regressors,
    zero_term,
)
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class AverFitNetParams:
    """CA-MKD repo script ``-r 1 -a 1 -b 100``: γ = α = 1, β = 100, T = 4; hint term off in epoch 1.

    ``parity=True`` reproduces the official detached hint term (docs/methods.md §4.6 departure, §7 #1): the term is a
    constant, the regressors never receive a gradient, and the method is numerically AVER-KD.
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    hint_weight: float = 100.0
    feature_warmup_epochs: int = 1
    parity: bool = False


@register_method("aver_fitnet")
class AverFitNet(Distiller):
    r"""AVER-KD plus an equal-weight FitNet hint from every teacher (docs/methods.md §4.6):

    .. math::
        \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1K\sum_k \frac1B\sum_b\ell^{KL}_T(z^s,z^k)_b
        + \beta\,\frac1K\sum_k \mathrm{MSE}_{\text{mean}}\big(r_k(F^s_{\text{hint}}), F^k_{\text{hint}}\big)

    with one :class:`~mkdlab.methods.adapters.ConvReg` :math:`r_k` per teacher on ``taps["hint"]``
    (RepDistiller's ``feat[2]``). The hint term is omitted (logged as a constant 0) while the 0-based epoch is
    below ``feature_warmup_epochs``. Terms: ``"ce"``, ``"kd"``, ``"hint"``.
    """

    Params = AverFitNetParams
    teachers_required = "many"
    needs_drop_last = True

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        self.regressors = hint_regressors(self.student, self.teachers)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        out = self.run_models(batch.images)
        logits, teacher_logits, student_maps, teacher_maps = (out.logits, out.teacher_logits, out.student_maps,
                                                              out.teacher_maps)
        weights = average_weights(teacher_logits)
        kd = weighted_kd_loss(logits, teacher_logits, weights, p.temperature)
        if feature_term_active(epoch, p.feature_warmup_epochs):
            hint_map = student_maps[self.student.taps["hint"]]
            hints = torch.stack([
                F.mse_loss(regressor(hint_map), maps[teacher.taps["hint"]])
                for regressor, teacher, maps in zip(self.regressors, self.teachers, teacher_maps, strict=True)
            ])
            if p.parity:  # the official code rebuilds the list as a new tensor: no autograd history
                hints = hints.detach()
            hint = p.hint_weight * hints.mean()
        else:
            hint = zero_term(logits)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd, "hint": hint},
            {"teacher_weights": weights},
        )
