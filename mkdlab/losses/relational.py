r"""Relational knowledge distillation (RKD; Park, Kim, Lu, Cho, CVPR 2019): distance and angle losses.

RKD transfers the *structure* of a batch instead of each sample's output: the student's pairwise distances and
triplet angles must match the teacher's. Both functions take B×D vectors (student, teacher); the teacher side is
a constant (``detach``), and both losses are element-averaged smooth-L1 (Huber, β = 1) as in the official code
(docs/methods.md §5.1, used by AMTML-KD between a student vector and the integrated teacher target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_distances(x: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    r"""Euclidean distance matrix (B×B) of the rows of ``x`` (B×D), as the RKD code computes it.

    .. math::
        d_{ij} = \sqrt{\max(\|x_i\|^2 + \|x_j\|^2 - 2\langle x_i, x_j\rangle,\ \epsilon)},\qquad d_{ii} = 0

    (``squared=True`` skips the square root). The diagonal is set to exactly 0.
    """
    x = x.flatten(1)
    square = x.pow(2).sum(dim=1)
    dist = (square[:, None] + square[None, :] - 2 * x @ x.T).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return dist.masked_fill(eye, 0.0)


def _normalised_distances(x: Tensor) -> Tensor:
    dist = pairwise_distances(x)
    return dist / dist[dist > 0].mean()


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    r"""RKD distance loss: smooth-L1 between the pairwise distance matrices, each divided by its mean positive entry.

    .. math::
        \psi_D(x)_{ij} = \frac{\|x_i - x_j\|_2}{\mu(x)},\quad
        \mu(x) = \operatorname{mean}_{i\neq j,\ d_{ij}>0} \|x_i - x_j\|_2,\qquad
        \mathcal L_D = \frac1{B^2}\sum_{i,j} \mathrm{smoothL1}\big(\psi_D(s)_{ij},\ \psi_D(t)_{ij}\big)

    Args:
        student: B×D student vectors (gradient flows).
        teacher: B×D teacher vectors (treated as constants).

    Returns:
        A scalar: the element mean over the B×B matrix (the diagonal, 0 on both sides, is included as in RKD).
    """
    with torch.no_grad():
        target = _normalised_distances(teacher.detach().float())
    return F.smooth_l1_loss(_normalised_distances(student.float()), target, reduction="mean")


def _triplet_cosines(x: Tensor) -> Tensor:
    diff = x.flatten(1)[None, :, :] - x.flatten(1)[:, None, :]  # diff[j, i] = x_i − x_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    r"""RKD angle loss: smooth-L1 between the cosines of every triplet's angle at its middle point.

    .. math::
        e_{ij} = \frac{x_i - x_j}{\|x_i - x_j\|_2},\qquad \psi_A(x)_{ijk} = \langle e_{ij},\ e_{kj}\rangle,\qquad
        \mathcal L_A = \frac1{B^3}\sum_{i,j,k}\mathrm{smoothL1}\big(\psi_A(s)_{ijk},\ \psi_A(t)_{ijk}\big)

    (:math:`e_{jj}=0`: ``F.normalize`` maps a zero difference to 0, so degenerate triplets have cosine 0 on both
    sides.) Memory is B³: fine for B ≤ 256.

    Args:
        student: B×D student vectors (gradient flows).
        teacher: B×D teacher vectors (treated as constants).
    """
    with torch.no_grad():
        target = _triplet_cosines(teacher.detach().float())
    return F.smooth_l1_loss(_triplet_cosines(student.float()), target, reduction="mean")


__all__ = ["pairwise_distances", "rkd_angle_loss", "rkd_distance_loss"]
