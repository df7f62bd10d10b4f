r"""Loss pieces of DTSKD, dual-teacher self-knowledge distillation (Li et al., Pattern Recognition 2024;
docs/methods.md §5.5).

The network teaches itself through two teachers made of its own outputs :math:`z` (backbone) and :math:`z_j`
(branches):

* the **historical teacher** — each output's own prediction for the same sample one epoch earlier, mixed with the
  label by :math:`\alpha_e` (:func:`historical_targets`; the schedules :func:`cosine_alpha`, :func:`linear_alpha`),
  distilled by :func:`historical_loss`;
* the **structural teacher** — the backbone's current softmax distilled into every branch (:func:`structural_loss`).

Both use the official ``KL_Loss`` (:func:`smoothed_kl`). All functions are pure; the memory banks, the α schedule's
length and the coefficients belong to :class:`~mkdlab.methods.dtskd.DTSKD`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.precision import at_least_float32

#: the smoothing constant the official ``KL_Loss`` adds to every target probability.
EPS = 1e-7


def smoothed_kl(target: Tensor, logits: Tensor, temperature: float = 1.0, eps: float = EPS) -> Tensor:
    r"""DTSKD's ``KL_Loss``: :math:`\frac{T^2}{B}\sum_{b,c}(q_{bc}+\epsilon)\big(\log(q_{bc}+\epsilon)
    - \log\mathrm{softmax}(z_b/T)_c\big)` with :math:`\epsilon = 10^{-7}` (docs/methods.md §5.5).

    ``target`` is a B×C probability table :math:`q` (a softmax, or a label/history mixture), ``logits`` the B×C
    student logits :math:`z`. Half-precision inputs are computed in float32. Gradients flow into ``target``
    unless it is detached.
    """
    log_p = F.log_softmax(at_least_float32(logits) / temperature, dim=1)
    q = at_least_float32(target) + eps
    return temperature**2 * (q * (q.log() - log_p)).sum() / logits.shape[0]


def cosine_alpha(epoch: int, epochs: int, c_max: float = 0.9, c_min: float = 0.0) -> float:
    r"""The cosine coefficient :math:`\alpha_e = c_{min} + (c_{max}-c_{min})\,\frac{1+\cos(\pi e/E)}{2}`
    (0-based epoch :math:`e` of :math:`E`; official ``--coeff_decay cos --cos_max 0.9 --cos_min 0``)."""
    return c_min + (c_max - c_min) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def linear_alpha(epoch: int, epochs: int) -> float:
    r"""The linear coefficient :math:`\alpha_e = 1 - 0.8\,(e+1)/E` (official ``--coeff_decay linear``)."""
    return 1.0 - 0.8 * (epoch + 1) / epochs


def historical_targets(labels: Tensor, memory: Tensor, seen: Tensor, alpha: float) -> Tensor:
    r"""Targets :math:`q^{(j)}_b = \alpha\,e_{y_b} + (1-\alpha)\,M^{(j)}_{i_b}` of every output (J×B×C).

    ``memory`` holds the rows :math:`M^{(j)}_{i_b}` of the batch (J×B×C); a sample whose ``seen`` flag (B,) is
    false has no history yet and uses its one-hot label in place of the row — the official code initialises the
    banks to one-hot labels, so its epoch-0 targets are one-hot.
    """
    one_hot = F.one_hot(labels, memory.shape[-1]).to(memory.dtype)
    history = torch.where(seen[None, :, None], memory, one_hot)
    return alpha * one_hot + (1.0 - alpha) * history


def historical_loss(outputs: Sequence[Tensor], targets: Tensor, weights: Sequence[float]) -> Tensor:
    r""":math:`\mathcal L_{hist} = \sum_j w_j\,\kappa(q^{(j)}, z_j)` with :math:`\kappa` = :func:`smoothed_kl`
    at T = 1 (official weights 3 for the backbone, 1 for each branch)."""
    return torch.stack([w * smoothed_kl(q, z) for w, q, z in zip(weights, targets, outputs, strict=True)]).sum()


def structural_loss(outputs: Sequence[Tensor], temperature: float = 4.0, detach_teacher: bool = False) -> Tensor:
    r""":math:`\mathcal L_{str} = \sum_{j\ge1} \kappa_T(\pi, z_j)`, :math:`\pi = \mathrm{softmax}(z/T)` of the
    backbone (``outputs[0]``), :math:`\kappa_T` = :func:`smoothed_kl` at temperature T.

    The official code does not detach :math:`\pi`: the backbone is also pulled towards its branches.
    ``detach_teacher=True`` stops that gradient.
    """
    teacher = F.softmax(at_least_float32(outputs[0]) / temperature, dim=1)
    if detach_teacher:
        teacher = teacher.detach()
    return torch.stack([smoothed_kl(teacher, z, temperature) for z in outputs[1:]]).sum()


__all__ = ["EPS", "cosine_alpha", "historical_loss", "historical_targets", "linear_alpha", "smoothed_kl",
           "structural_loss"]
