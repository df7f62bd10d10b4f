"""AEKD: adaptive ensemble KD in gradient space (Du et al., NeurIPS 2020), as in the CA-MKD repo (§4.9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses import kd_loss
from mkdlab.losses.aekd_solver import aekd_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.feature_terms import (
    feature_term_active,
    hint_regressors,
    zero_term,
)
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class AEKDParams:
    """CA-MKD repo script ``-r 1 -a 1 -b 0 -C 0.6``: γ = α = 1, T = 4, cap C = 0.6.

    ``parity=True`` solves for the weights with the official scikit-learn ``OneClassSVM`` call on the raw Gram
    matrix (docs/methods.md §7 #2: on realistic KD gradients it returns its initial point, (0.6, 0.4, 0) for K = 3);
    the default solves the capped minimum-norm problem exactly. ``normalize`` is the official ``--svm_norm`` for
    the logit weights (off); ``feature_normalize`` the same for the hint weights (on, the official default there).
    ``variant="feature"`` adds AEKD-feature: one ConvReg per teacher on ``taps["hint"]`` and
    β Σ_k α'_k MSE_k with β = ``hint_weight`` (100: mkdlab's choice, docs/methods.md §4.9), off in epoch 1.
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    cap: float = 0.6
    parity: bool = False
    normalize: bool = False
    variant: Literal["logits", "feature"] = "logits"
    hint_weight: float = 100.0
    feature_normalize: bool = True
    feature_warmup_epochs: int = 1


def _batch_mean_gradients(losses: list[Tensor], wrt: Tensor) -> Tensor:
    """``∂L_k/∂wrt`` for every loss, averaged over the batch dimension and flattened: K×D."""
    grads = [torch.autograd.grad(loss, wrt, retain_graph=True)[0] for loss in losses]
    return torch.stack([g.float().mean(0).flatten() for g in grads])


@register_method("aekd")
class AEKD(Distiller):
    r"""Adaptive ensemble KD (docs/methods.md §4.9).

    Per step: :math:`L_k = \frac1B\sum_b\ell^{KL}_T(z^s,z^k)_b`; :math:`\bar g_k = \frac1B\sum_b
    \partial L_k/\partial z^s_b` (``torch.autograd.grad`` w.r.t. the student logits, which the official code
    obtains with a hook and K backward passes); :math:`G=[\langle\bar g_k,\bar g_l\rangle]`;

    .. math::
        \alpha = \arg\min_{\alpha\ge0,\ \sum\alpha=1,\ \alpha_k\le C}\tfrac12\alpha^\top G\alpha,\qquad
        \mathcal L = \gamma\,\mathrm{CE} + \alpha_{KD}\sum_k \alpha_k L_k

    with :math:`\alpha` from :func:`~mkdlab.losses.aekd_solver.aekd_weights` treated as constants. The feature variant
    adds :math:`\beta\sum_k\alpha'_k\,\mathrm{MSE}_{\text{mean}}(r_k(F^s_{\text{hint}}),F^k_{\text{hint}})`, the
    :math:`\alpha'` from the batch-averaged gradients of the hint losses w.r.t. the student hint map
    (normalised by default), switched off while the 0-based epoch is below ``feature_warmup_epochs``.
    Terms ``"ce"``, ``"kd"`` (and ``"hint"``). Extras ``"teacher_weights"`` = :math:`\alpha` broadcast to B×K
    (and ``"feature_weights"`` = :math:`\alpha'` when the hint term is on).
    """

    Params = AEKDParams
    teachers_required = "many"
    needs_drop_last = True
    compilable = False  # the weights come from torch.autograd.grad inside forward_train

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        if self.params.cap * len(self.teachers) < 1:
            raise ValueError(f"AEKD's cap C = {self.params.cap} is below 1/K for K = {len(self.teachers)} teachers")
        if self.params.variant not in ("logits", "feature"):
            raise ValueError(f"unknown AEKD variant {self.params.variant!r}; choose logits or feature")
        self.regressors = hint_regressors(self.student, self.teachers) if self.params.variant == "feature" else None

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        out = self.run_models(batch.images, maps=self.regressors is not None)
        logits, teacher_logits, student_maps, teacher_maps = (out.logits, out.teacher_logits, out.student_maps,
                                                              out.teacher_maps)
        batch_size, k = logits.shape[0], teacher_logits.shape[0]

        per_teacher = [kd_loss(logits, t, p.temperature) for t in teacher_logits]
        alpha = aekd_weights(_batch_mean_gradients(per_teacher, logits), p.cap, p.parity, p.normalize)
        stacked = torch.stack(per_teacher)
        kd = (alpha.to(stacked.dtype) * stacked).sum()
        losses = {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd}
        extras = {"teacher_weights": alpha.float().expand(batch_size, k).clone()}

        if self.regressors is not None:
            if feature_term_active(epoch, p.feature_warmup_epochs):
                hint_map = student_maps[self.student.taps["hint"]]
                hints = [
                    F.mse_loss(regressor(hint_map), maps[teacher.taps["hint"]])
                    for regressor, teacher, maps in zip(self.regressors, self.teachers, teacher_maps, strict=True)
                ]
                beta = aekd_weights(_batch_mean_gradients(hints, hint_map), p.cap, p.parity, p.feature_normalize)
                hint_losses = torch.stack(hints)
                losses["hint"] = p.hint_weight * (beta.to(hint_losses.dtype) * hint_losses).sum()
                extras["feature_weights"] = beta.float().expand(batch_size, k).clone()
            else:
                losses["hint"] = zero_term(logits)
        return StepOutput(logits, losses, extras)
