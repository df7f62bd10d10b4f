"""Logit-matching losses: vanilla KD (Hinton et al., 2015)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["batchmean", "mean", "sum", "none"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Knowledge-distillation loss :math:`T^2\,\mathrm{KL}(p^t_T \,\|\, p^s_T)` (Hinton et al., 2015).

    .. math::
        \ell_b = T^2 \sum_c p^t_{T,bc}\,\big(\log p^t_{T,bc} - \log p^s_{T,bc}\big),\qquad
        p_T = \mathrm{softmax}(z / T)

    The :math:`T^2` factor keeps the gradient's magnitude independent of the temperature (methods.md §1, §4.1).

    Args:
        student_logits: B×C student logits.
        teacher_logits: B×C teacher logits (treated as constants by the caller: compute them without grad).
        temperature: softening temperature T.
        reduction: ``"batchmean"`` (sum over classes, mean over samples: RepDistiller/mdistiller), ``"none"``
            (the per-sample vector, shape (B,)), ``"sum"``, or ``"mean"`` (element mean over B·C, PyTorch's
            ``KLDivLoss()`` default used by the AMTML notebooks: 1/C of batchmean).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2
    return reduce(per_sample, reduction, classes=student_logits.shape[1])


def reduce(per_sample: Tensor, reduction: Reduction, classes: int = 1) -> Tensor:
    """Reduce a per-sample loss vector (B,) as ``batchmean``/``mean``/``sum``/``none``.

    ``mean`` divides by B·``classes`` (the element mean of a B×C loss), ``batchmean`` by B.
    """
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "mean":
        return per_sample.mean() / classes
    raise ValueError(f"unknown reduction {reduction!r}; choose batchmean, mean, sum or none")
