"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): target-class and non-target-class KD, re-weighted."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mkdlab.losses.divergences import dkd_loss
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method
from mkdlab.typed import ConfigError


@dataclass(frozen=True)
class DKDParams:
    """mdistiller's DKD config (docs/methods.md §4.4): α = 1, β = 8, T = 4, CE weight 1, 20 warm-up epochs."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    #: the DKD term is scaled by ``min((epoch + 1) / warmup_epochs, 1)``; 0 disables the warm-up.
    warmup_epochs: int = 20

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError(
                f"method.params.warmup_epochs: must be >= 0 (0 disables the warm-up), got {self.warmup_epochs}"
            )


@register_method("dkd")
class DKD(Distiller):
    r"""Decoupled KD (mdistiller ``DKD``, docs/methods.md §4.4):

    .. math::
        \mathcal L = \gamma\,\mathrm{CE}(z^s,y)
            + \min\!\Big(\frac{e+1}{W},\,1\Big)\big(\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}\big)

    with :math:`e` the trainer's 0-based epoch (so the first epoch uses :math:`1/W`, 0.05 for :math:`W=20`, as
    mdistiller's 1-indexed ``epoch / warmup``) and TCKD/NCKD from :func:`~mkdlab.losses.divergences.dkd_terms`.
    The warm-up scales the whole DKD term, not CE.

    Guidance for β (mdistiller's per-pair configs; α = 1 and T = 4 throughout): resnet56→resnet20 2,
    resnet110→resnet32 2, vgg13→vgg8 6, wrn_40_2→wrn_16_2 6, wrn_40_2→wrn_40_1 6, vgg13→MobileNetV2 6;
    resnet32x4→resnet8x4 / ShuffleV1 / ShuffleV2, ResNet50→MobileNetV2 and wrn_40_2→ShuffleV1 keep 8.
    """

    Params = DKDParams
    teachers_required = "one"

    def warmup_factor(self, epoch: int) -> float:
        """``min((epoch + 1) / warmup_epochs, 1)`` for the 0-based ``epoch``; 1 when the warm-up is disabled."""
        warmup = self.params.warmup_epochs
        return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher_logits = self.teacher_logits(batch.images)[0]
        logits = self.student(batch.images)
        dkd = dkd_loss(logits, teacher_logits, batch.labels, p.alpha, p.beta, p.temperature)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "dkd": self.warmup_factor(epoch) * dkd},
            {"teacher_weights": torch.ones(logits.shape[0], 1, device=logits.device)},
        )
