"""Feature-matching losses: FitNet hints (Romero et al., 2015) and attention transfer (Zagoruyko & Komodakis, 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.divergences import reduce


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
    ``nn.MSELoss()``, methods.md §1, §4.2.) The caller applies the regressor :math:`r`; both maps must have the
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


def attention_map(feature_map: Tensor, p: float = 2.0) -> Tensor:
    r"""Spatial attention map of attention transfer (Zagoruyko & Komodakis, ICLR 2017; methods.md §1).

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
    r"""Attention-transfer loss summed over pairs of maps (Zagoruyko & Komodakis, ICLR 2017; methods.md §4.3).

    .. math::
        \mathcal L_{AT} = \sum_{\ell}\frac{1}{B\,HW}\sum_{b,i}
            \big(a(F^s_\ell)_{b,i} - a(F^t_\ell)_{b,i}\big)^2

    with :math:`a` from :func:`attention_map`. As RepDistiller's ``Attention``: when the spatial sizes of a pair
    differ, the *larger* map is adaptively average-pooled to the smaller size before :math:`a` is computed. This is
    the squared, element-averaged form of the reference implementations, not the paper's un-squared
    :math:`p`-norm with :math:`\beta/2` (methods.md §4.3). Channel counts may differ (they are averaged away).

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
