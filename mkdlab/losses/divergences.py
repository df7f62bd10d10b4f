"""Logit-matching losses between one student and one target: vanilla KD (Hinton et al., 2015), KL to a probability
target (:func:`soft_target_kl`) and decoupled KD (Zhao et al., 2022). The multi-teacher forms are in
:mod:`mkdlab.losses.multi_teacher`."""

from __future__ import annotations

from typing import Literal

import torch
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

    The :math:`T^2` factor keeps the gradient's magnitude independent of the temperature (docs/methods.md §1, §4.1).

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


def soft_target_kl(student_logits: Tensor, target: Tensor, temperature: float,
                   reduction: Literal["batchmean", "mean"] = "batchmean") -> Tensor:
    r"""KL divergence to a probability target, AMTML-KD's soft loss (Liu, Zhang, Wang, Neurocomputing 2020;
    docs/methods.md §5.1):

    .. math::
        \mathcal L = \frac{T^2}{D}\sum_{b,c} q_{bc}\big(\log q_{bc} - \log p^s_{T,bc}\big),\qquad
        p^s_T = \mathrm{softmax}(z^s/T)

    with :math:`D = B` (``"batchmean"``) or :math:`D = BC` (``"mean"``, PyTorch's ``KLDivLoss()`` default).
    ``target`` is a B×C probability table :math:`q` (e.g. :func:`~mkdlab.losses.multi_teacher.integrated_target`);
    terms with :math:`q_{bc}=0` contribute 0 (``xlogy``). The student logits are computed in float32.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    total = torch.xlogy(target, target).sum() - (target * log_p_s).sum()
    divisor = target.shape[0] * (target.shape[1] if reduction == "mean" else 1)
    return temperature**2 * total / divisor


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


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
) -> tuple[Tensor, Tensor]:
    r"""Per-sample target-class and non-target-class KD terms of decoupled KD (Zhao et al., CVPR 2022).

    With :math:`p_T=\mathrm{softmax}(z/T)`, :math:`g_b` the one-hot mask of :math:`y_b` and
    :math:`b_b=\big(p_{T,by_b},\,1-p_{T,by_b}\big)` (computed as masked sums of the full softmax, as mdistiller's
    ``dkd_loss`` does):

    .. math::
        \mathrm{TCKD}_b = T^2\,\mathrm{KL}\big(b^t_b\,\|\,b^s_b\big),\qquad
        \mathrm{NCKD}_b = T^2\,\mathrm{KL}\big(\hat p^{\,t}_b\,\|\,\hat p^{\,s}_b\big),\qquad
        \hat p_b = \mathrm{softmax}\big(z_b/T - 1000\,g_b\big)

    :math:`\log b^s` is the plain log (no clamp) and :math:`\hat p` pushes the target class out of the softmax,
    which equals the renormalised distribution over the :math:`C-1` non-target classes up to rounding
    (docs/methods.md §4.4). Classical KD decomposes as
    :math:`\mathrm{KD}_b=\mathrm{TCKD}_b+(1-p^t_{T,by_b})\,\mathrm{NCKD}_b` (docs/methods.md §4.4, §7).

    Args:
        student_logits: B×C student logits.
        teacher_logits: B×C teacher logits (constants: compute them without grad).
        target: B class indices.
        temperature: softening temperature T.

    Returns:
        ``(tckd, nckd)``, two vectors of shape (B,), each already multiplied by :math:`T^2`.
    """
    gt_mask = torch.zeros_like(student_logits).scatter_(1, target.long().unsqueeze(1), 1.0)
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    b_s = torch.stack([(p_s * gt_mask).sum(1), (p_s * (1.0 - gt_mask)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt_mask).sum(1), (p_t * (1.0 - gt_mask)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1) * temperature**2
    log_hat_s = F.log_softmax(student_logits / temperature - 1000.0 * gt_mask, dim=1)
    hat_t = F.softmax(teacher_logits / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_hat_s, hat_t, reduction="none").sum(1) * temperature**2
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: Literal["batchmean", "sum", "none"] = "batchmean",
) -> Tensor:
    r"""Decoupled knowledge distillation :math:`\alpha\,\mathrm{TCKD}+\beta\,\mathrm{NCKD}` (Zhao et al., CVPR 2022).

    .. math::
        \ell_b = \alpha\,T^2\,\mathrm{KL}\big(b^t_b\,\|\,b^s_b\big)
               + \beta\,T^2\,\mathrm{KL}\big(\hat p^{\,t}_b\,\|\,\hat p^{\,s}_b\big)

    with the binary target/other distributions :math:`b` and the target-masked softmax :math:`\hat p` of
    :func:`dkd_terms` (mdistiller ``dkd_loss``, docs/methods.md §4.4). The warm-up factor
    :math:`\min(e/W, 1)` of the DKD method is *not* included (the method applies it).

    Args:
        student_logits: B×C student logits.
        teacher_logits: B×C teacher logits (constants: compute them without grad).
        target: B class indices.
        alpha: weight of TCKD.
        beta: weight of NCKD (8 by default; mdistiller's per-pair overrides are listed in docs/methods.md §4.4).
        temperature: softening temperature T.
        reduction: ``"batchmean"`` (mean over samples, mdistiller), ``"sum"`` or ``"none"`` (shape (B,)).
    """
    if reduction not in ("batchmean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r} for dkd_loss; choose batchmean, sum or none")
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return reduce(alpha * tckd + beta * nckd, reduction)
