r"""Multi-teacher logit losses: the logits of K teachers, stacked K×B×C, against one student's B×C logits.

* :func:`weighted_kd_loss` — per-sample weighted KD :math:`\frac1B\sum_b\sum_k w_{bk}\,\ell^{KL}_T(z^s,z^k)_b`;
* :func:`weighted_kd` — the same with the weights from a weighting of :mod:`mkdlab.losses.weightings`: AVER-KD,
  EBKD and CA-MKD's logit branch are this one loss with another weighting;
* :func:`per_teacher_kd`, :func:`de_mkd_kd_loss` — DE-MKD's per-teacher decoupled KD;
* :func:`integrated_target` — AMTML-KD's importance-weighted mixture of the teachers' distributions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.divergences import dkd_terms, kd_loss
from mkdlab.losses.weightings import Weighting


def weighted_kd_loss(student_logits: Tensor, teacher_logits: Tensor, weights: Tensor,
                     temperature: float = 4.0) -> Tensor:
    r"""Per-sample weighted multi-teacher KD: :math:`\frac1B\sum_b\sum_k w_{bk}\,\ell^{KL}_T(z^s,z^k)_b`.

    ``teacher_logits`` are stacked K×B×C and ``weights`` are B×K; :math:`\ell^{KL}_T` is :func:`kd_loss` per sample
    (with :math:`T^2`). With :math:`w=1/K` this is AVER-KD; EBKD, CA-MKD and MMKD differ only in their weights (and
    in whether these sum to 1, docs/methods.md §1).
    """
    per_sample = torch.stack([kd_loss(student_logits, t, temperature, reduction="none") for t in teacher_logits])
    return (weights.T * per_sample).sum(0).mean()


class WeightedKDLoss(NamedTuple):
    """What :func:`weighted_kd` returns: the scalar loss and the B×K weights the weighting gave."""

    loss: Tensor
    weights: Tensor


def weighted_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, weighting: Weighting,
                temperature: float = 4.0, mean_over_teachers: bool = False) -> WeightedKDLoss:
    r"""Weighted multi-teacher KD with the weights of ``weighting`` (docs/methods.md §1, §4.5, §4.7, §4.8):

    .. math::
        w = \mathrm{weighting}(z^{1..K}, y)\in\mathbb R^{B\times K},\qquad
        \mathcal L = \frac1{B\,D}\sum_b\sum_k w_{bk}\,\ell^{KL}_T(z^s,z^k)_b

    with :math:`D=1`, or :math:`D=K` with ``mean_over_teachers`` (CA-MKD's official loss divides the weighted sum
    by :math:`K` once more). AVER-KD is ``aver``, EBKD ``entropy`` (``norm="per_K"`` by default) and CA-MKD's logit
    branch ``confidence`` with ``mean_over_teachers``.

    Args:
        student_logits: B×C student logits.
        teacher_logits: K×B×C teacher logits (constants: compute them without grad).
        labels: B class indices (used by the weightings that need them).
        weighting: ``(teacher_logits, labels) -> B×K``, e.g. :func:`~mkdlab.losses.weightings.get_weighting`.
        temperature: softening temperature T.
        mean_over_teachers: divide the weights by K before weighting the losses.

    Returns:
        The loss and the weights :math:`w` as the weighting gave them (before any :math:`1/K`).
    """
    weights = weighting(teacher_logits, labels)
    applied = weights / teacher_logits.shape[0] if mean_over_teachers else weights
    return WeightedKDLoss(weighted_kd_loss(student_logits, teacher_logits, applied, temperature), weights)


def per_teacher_kd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0,
                   tckd_weight: float = 1.0, nckd_weight: float = 8.0, decoupled: bool = True) -> Tensor:
    r"""K×B per-teacher, per-sample distillation terms :math:`d_{kb}` of DE-MKD (Cheng et al., Mathematics 2024;
    docs/methods.md §5.2): :math:`a\,\mathrm{TCKD}_{kb}+b\,\mathrm{NCKD}_{kb}`
    (:func:`~mkdlab.losses.divergences.dkd_terms`, each with :math:`T^2`) or, with ``decoupled=False``, vanilla
    :math:`\ell^{KL}_T(z^s,z^k)_b`."""
    rows = []
    for logits in teacher_logits:
        if decoupled:
            tckd, nckd = dkd_terms(student_logits, logits, target, temperature)
            rows.append(tckd_weight * tckd + nckd_weight * nckd)
        else:
            rows.append(kd_loss(student_logits, logits, temperature, reduction="none"))
    return torch.stack(rows)


def de_mkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, weights: Tensor,
                   temperature: float = 4.0, tckd_weight: float = 1.0, nckd_weight: float = 8.0,
                   decoupled: bool = True) -> Tensor:
    r"""DE-MKD's distillation loss (Cheng et al., Mathematics 2024, Eq. 4; docs/methods.md §5.2)

    .. math:: \mathcal L_{KD}=\frac1B\sum_b\sum_k\tilde w_{kb}\,(a\,\mathrm{TCKD}_{kb}+b\,\mathrm{NCKD}_{kb})

    for K×B×C teacher logits and B×K weights (:func:`per_teacher_kd`; no warm-up factor, no α)."""
    d = per_teacher_kd(student_logits, teacher_logits, target, temperature, tckd_weight, nckd_weight, decoupled)
    return (weights.T * d).sum(0).mean()


def integrated_target(importances: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""AMTML-KD's integrated soft target (Liu, Zhang, Wang, Neurocomputing 2020; docs/methods.md §5.1)

    .. math:: q_b=\sum_k \mu_{bk}\,\mathrm{softmax}(z^k_b/T)

    importances :math:`\mu` B×K, teacher logits K×B×C (computed in float32) → B×C."""
    probs = F.softmax(teacher_logits.float() / temperature, dim=2)
    return torch.einsum("bk,kbc->bc", importances, probs)


__all__ = ["WeightedKDLoss", "de_mkd_kd_loss", "integrated_target", "per_teacher_kd", "weighted_kd",
           "weighted_kd_loss"]
