"""Feature-matching losses and the map operations they need.

* hints: :func:`hint_loss` (FitNet, Romero et al., 2015), :func:`per_sample_mse` (its per-sample form in float32,
  weighted by CA-MKD, DE-MKD and MMKD), :func:`weighted_feature_loss` (DE-MKD), :func:`normalised_hint_loss`
  (AMTML-KD);
* attention transfer (Zagoruyko & Komodakis, 2017): :func:`attention_map`, :func:`at_loss`;
* map operations: :func:`resize_to` (CA-MKD's pool-or-upsample), :func:`gram_matrix` (MMKD's batch Gram matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.divergences import reduce
from mkdlab.losses.precision import at_least_float32


def hint_loss(
    student_map: Tensor,
    teacher_map: Tensor,
    reduction: Literal["mean", "batchmean", "sum", "none"] = "mean",
) -> Tensor:
    r"""FitNet hint loss: mean squared difference between a (regressed) student map and the teacher's hint map.

    .. math::
        \ell_b = \frac{1}{c\,h\,w}\sum_{c,i,j}\big(r(F^s)_{b,cij} - F^t_{b,cij}\big)^2,\qquad
        \mathcal L_{\mathrm{mean}} = \frac1B\sum_b \ell_b

    (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015; RepDistiller's ``HintLoss`` =
    ``nn.MSELoss()``, docs/methods.md §1, §4.2.) The caller applies the regressor :math:`r`; both maps must have the
    same shape.

    Args:
        student_map: B×c×h×w student map, already mapped onto the teacher's shape (e.g. by ``ConvReg``).
        teacher_map: B×c×h×w teacher map (a constant: computed without grad).
        reduction: ``"mean"`` (element mean over B·c·h·w, = ``nn.MSELoss()``; ``"batchmean"`` is the same value),
            ``"none"`` (per-sample mean over (c, h, w), shape (B,), the form CA-MKD/MMKD/JCS-MKD weight) or
            ``"sum"`` (the sum over samples of the per-sample means).
    """
    if student_map.shape != teacher_map.shape:
        raise ValueError(f"hint_loss needs maps of one shape, got {tuple(student_map.shape)} (student) and "
                         f"{tuple(teacher_map.shape)} (teacher); map the student with a regressor first")
    per_sample = (student_map - teacher_map).pow(2).flatten(1).mean(1)
    return reduce(per_sample, reduction)


def per_sample_mse(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    r"""Per-sample MSE :math:`\ell_b=\mathrm{mean}_{chw}(F^s_b-F^t_b)^2` (docs/methods.md §1, "per-sample MSE"), shape
    (B,): :func:`hint_loss` with ``reduction="none"``, computed in float32 at least (under autocast the maps may be
    half precision)."""
    return hint_loss(at_least_float32(student_map), at_least_float32(teacher_map), reduction="none")


def weighted_feature_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], weights: Tensor) -> Tensor:
    r"""DE-MKD's intermediate loss (Cheng et al., Mathematics 2024, Eq. 5; docs/methods.md §5.2)

    .. math:: \mathcal L_{inter}=\frac1B\sum_b\sum_k\tilde w_{kb}\,\mathrm{mean}_{chw}(r_k(F^s)_b-F^k_b)^2

    from the K regressed student maps, the K teacher maps and B×K weights (no β)."""
    mse = torch.stack([per_sample_mse(s, t) for s, t in zip(student_maps, teacher_maps, strict=True)])  # K×B
    return (weights.T * mse).sum(0).mean()


def normalised_hint_loss(projected: Tensor, teacher_hint: Tensor) -> Tensor:
    r"""AMTML-KD's hint (Liu, Zhang, Wang, Neurocomputing 2020; docs/methods.md §5.1)
    :math:`\mathrm{mean}\big((P(\bar S)-\bar H)^2\big)`: ``projected`` = :math:`P(\bar S)` (B×C×h×w), the teacher
    map (B×C×h'×w', a 1×1 map broadcasts over the student grid) is L2-normalised along channels here."""
    target = F.normalize(teacher_hint.float(), dim=1).expand_as(projected)
    return (projected.float() - target).pow(2).mean()


def attention_map(feature_map: Tensor, p: float = 2.0) -> Tensor:
    r"""Spatial attention map of attention transfer (Zagoruyko & Komodakis, ICLR 2017; docs/methods.md §1).

    .. math::
        a(F)_b = \frac{v_b}{\lVert v_b\rVert_2},\qquad
        v_b = \mathrm{vec}_{hw}\Big(\frac1c\sum_{c} F_{b,c}^{\,p}\Big)

    Args:
        feature_map: B×c×h×w map (post-ReLU in the reference code, so non-integer ``p`` is defined).
        p: power applied element-wise before averaging over channels.

    Returns:
        B×(h·w) rows of unit L2 norm (``F.normalize``, eps 1e-12, as RepDistiller).
    """
    return F.normalize(feature_map.pow(p).mean(1).flatten(1), p=2.0, dim=1)


def at_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], p: float = 2.0) -> Tensor:
    r"""Attention-transfer loss summed over pairs of maps (Zagoruyko & Komodakis, ICLR 2017; docs/methods.md §4.3).

    .. math::
        \mathcal L_{AT} = \sum_{\ell}\frac{1}{B\,HW}\sum_{b,i}
            \big(a(F^s_\ell)_{b,i} - a(F^t_\ell)_{b,i}\big)^2

    with :math:`a` from :func:`attention_map`. As RepDistiller's ``Attention``: when the spatial sizes of a pair
    differ, the *larger* map is adaptively average-pooled to the smaller size before :math:`a` is computed. This is
    the squared, element-averaged form of the reference implementations, not the paper's un-squared
    :math:`p`-norm with :math:`\beta/2` (docs/methods.md §4.3). Channel counts may differ (they are averaged away).

    Args:
        student_maps: the student's maps, B×c×h×w each.
        teacher_maps: the teacher's maps, paired in order with ``student_maps`` (constants).
        p: power of :func:`attention_map`.

    Returns:
        A scalar: the sum over pairs of the per-pair element mean.
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"at_loss needs as many student maps as teacher maps (at least one), got "
                         f"{len(student_maps)} and {len(teacher_maps)}")
    total = None
    for f_s, f_t in zip(student_maps, teacher_maps, strict=True):
        size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
        if tuple(f_s.shape[-2:]) != size:
            f_s = F.adaptive_avg_pool2d(f_s, size)
        if tuple(f_t.shape[-2:]) != size:
            f_t = F.adaptive_avg_pool2d(f_t, size)
        term = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


def resize_to(feature_map: Tensor, size: tuple[int, int]) -> Tensor:
    """CA-MKD's resizing (docs/methods.md §4.8): adaptive average pool when the map is at least as large as ``size`` (by
    height), else bilinear upsampling (``align_corners=False``, PyTorch's default); identity when the size already
    matches."""
    if tuple(feature_map.shape[-2:]) == tuple(size):
        return feature_map
    if feature_map.shape[-2] >= size[0]:
        return F.adaptive_avg_pool2d(feature_map, size)
    return F.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)


def gram_matrix(feature_map: Tensor, norm: Literal["none", "row_l2"] = "none") -> Tensor:
    r"""MMKD's batch Gram matrix (Zhang, Chen, Wang, ICME 2023, Eq. 3; docs/methods.md §5.3): :math:`G=QQ^\top` with
    :math:`Q=\mathrm{vec}(F)\in\mathbb R^{B\times chw}`, B×B; ``"row_l2"`` L2-normalises each row
    (similarity-preserving KD's normalisation)."""
    q = feature_map.flatten(1)
    gram = q @ q.T
    return F.normalize(gram, dim=1) if norm == "row_l2" else gram


__all__ = [
    "at_loss",
    "attention_map",
    "gram_matrix",
    "hint_loss",
    "normalised_hint_loss",
    "per_sample_mse",
    "resize_to",
    "weighted_feature_loss",
]
