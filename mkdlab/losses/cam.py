r"""Loss pieces of JCS-MKD (Ding et al., EAAI 2025; docs/methods.md §5.4): class-attention transfer and self-knowledge.

* **CAT** (class attention transfer, from CAT-KD, Guo et al., CVPR 2023): :func:`cat_distances` /
  :func:`cat_loss` compare the class activation maps (:func:`mkdlab.cam.class_activation_maps`) of the student and
  of each teacher after average pooling to an :math:`r\times r` grid, optionally L2-normalised per channel, with
  per-sample teacher weights.
* **Self-knowledge** (the USKD recipe of Yang et al., ICCV 2023, as used by JCS-MKD): a customised target-class
  label (:func:`customised_target_label`, :func:`target_loss`), Zipf-shaped non-target labels ranked by a score
  (:func:`ranking_scores`, :func:`zipf_nontarget_labels`, :func:`nontarget_loss`) and the weak head's
  label-smoothed cross-entropy (:func:`weak_loss`); :func:`self_knowledge_terms` composes them.

All functions are pure (tensors in, tensors out); the coefficients (:math:`\lambda_{CAT}`, 0.08, :math:`\alpha_t`,
:math:`\beta_{nt}`, :math:`\mu`) belong to :class:`~mkdlab.methods.jcs_mkd.JCSMKD`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: the constant in the denominators of the ranking score (USKD / JCS-MKD code).
RANK_EPS = 1e-6

Ranking = Literal["probs", "log_probs"]


# -- class attention transfer ----------------------------------------------------------------------------------
def pooled_cams(cams: Tensor, resolution: int = 2, normalize: bool = False) -> Tensor:
    r""":math:`N(P(A))`: adaptive average pooling of B×C×H×W maps to ``resolution``², then, with ``normalize``, each
    channel's r×r grid divided by its L2 norm (``F.normalize(·, dim=(2, 3))``, eps 1e-12)."""
    pooled = F.adaptive_avg_pool2d(cams, resolution)
    return F.normalize(pooled, dim=(2, 3)) if normalize else pooled


def cat_distances(student_cams: Tensor, teacher_cams: Sequence[Tensor] | Tensor, resolution: int = 2,
                  normalize: bool = False) -> Tensor:
    r"""Per-teacher, per-sample CAT distances

    .. math:: m_{kb} = \mathrm{mean}_{c,i,j}\big(N(P(A^s))_b - N(P(A^k))_b\big)^2

    Args:
        student_cams: B×C×H×W student CAMs.
        teacher_cams: K maps B×C×H_k×W_k (a list, or a stacked K×B×C×H×W tensor); native sizes may differ
            from the student's, pooling brings every map to ``resolution``².
        resolution: the side :math:`r` of the pooled grid (2 in CAT-KD and JCS-MKD).
        normalize: per-channel L2 normalisation of the pooled grids (``IF_NORMALIZE``).

    Returns:
        K×B distances.
    """
    student = pooled_cams(student_cams, resolution, normalize)
    return torch.stack([(student - pooled_cams(t, resolution, normalize)).pow(2).flatten(1).mean(1)
                        for t in teacher_cams])


def cat_loss(student_cams: Tensor, teacher_cams: Sequence[Tensor] | Tensor, weights: Tensor | None = None,
             resolution: int = 2, normalize: bool = False) -> Tensor:
    r"""Weighted class-attention-transfer loss of JCS-MKD (docs/methods.md §5.4):

    .. math:: \mathcal L_{CAT} = \frac1{BK}\sum_{b,k}\omega_{kb}\,m_{kb}

    (:func:`cat_distances`). With the CA-MKD weights (rows summing to 1) this keeps the official extra :math:`1/K`.
    ``weights=None`` means :math:`\omega=1`: the plain mean over teachers and samples, which for one teacher is
    CAT-KD's single-teacher loss (``F.mse_loss`` of the pooled maps).

    Args:
        student_cams, teacher_cams, resolution, normalize: as in :func:`cat_distances`.
        weights: B×K per-sample teacher weights, or ``None``.
    """
    distances = cat_distances(student_cams, teacher_cams, resolution, normalize)  # K×B
    k, b = distances.shape
    if weights is None:
        return distances.mean()
    if weights.shape != (b, k):
        raise ValueError(f"weights must be B×K = {b}×{k}, got {tuple(weights.shape)}")
    return (weights.T * distances).sum() / (b * k)


# -- self-knowledge: target class ------------------------------------------------------------------------------
def _target_mask(logits: Tensor, labels: Tensor) -> Tensor:
    return F.one_hot(labels, logits.shape[1]).bool()


def customised_target_label(student_logits: Tensor, labels: Tensor) -> Tensor:
    r"""USKD's customised soft label of the target class (no gradient):

    .. math:: t_b = p_{by}^2 + 1 - \frac1B\sum_{b'}p_{b'y}^2,\qquad p=\mathrm{softmax}(z^s)

    (above 1 when the sample is more confident than the batch average: not clipped, as in the code). Shape (B,).
    """
    with torch.no_grad():
        p_target = student_logits.softmax(1).gather(1, labels[:, None])[:, 0]
        squared = p_target.pow(2)
        return squared + 1 - squared.mean()


def target_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    r""":math:`\mathcal L_t = -\frac1B\sum_b t_b\log p_{by}` with :func:`customised_target_label` :math:`t_b`."""
    log_p_target = student_logits.log_softmax(1).gather(1, labels[:, None])[:, 0]
    return -(customised_target_label(student_logits, labels) * log_p_target).mean()


# -- self-knowledge: non-target classes ------------------------------------------------------------------------
def ranking_scores(head_logits: Tensor, student_logits: Tensor, labels: Tensor,
                   ranking: Ranking = "log_probs") -> Tensor:
    r"""JCS-MKD's ranking score of every class (no gradient):

    .. math:: \rho_{bc} = \frac{r_{bc}}{1 - r_{by} + 10^{-6}} + \frac{s_{bc}}{1 - s_{by} + 10^{-6}},\qquad
              r = \mathrm{softmax}(h)

    with :math:`s = \log p = \log\mathrm{softmax}(z^s)` (``ranking="log_probs"``, the default: USKD's own code,
    ``yzd-v/cls_KD`` ``mmcls/models/dis_losses/uskd.py`` lines 53-54 and 73, ranks on ``log_softmax``, and so does
    JCS-MKD's code) or :math:`s = p` (``"probs"``, an mkdlab option). B×C.
    """
    with torch.no_grad():
        r = head_logits.softmax(1)
        s = student_logits.softmax(1) if ranking == "probs" else student_logits.log_softmax(1)
        index = labels[:, None]
        return r / (1 - r.gather(1, index) + RANK_EPS) + s / (1 - s.gather(1, index) + RANK_EPS)


def zipf_nontarget_labels(scores: Tensor, labels: Tensor) -> Tensor:
    r"""Zipf non-target labels from a ranking score (no gradient): classes sorted by ``scores`` in descending order
    (the target included; ties keep the lower class index first), the class at rank :math:`k` (1-based) gets
    :math:`1/k`, the target's entry is set to 0 and the rest renormalised to sum 1 over the :math:`C-1`
    non-target classes.

    Returns:
        B×C labels, 0 at the target, rows summing to 1.
    """
    with torch.no_grad():
        order = scores.argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)  # 0-based rank of every class
        zipf = (rank + 1).to(scores.dtype).reciprocal().masked_fill(_target_mask(scores, labels), 0.0)
        return zipf / zipf.sum(1, keepdim=True)


def nontarget_loss(student_logits: Tensor, nontarget_labels: Tensor, labels: Tensor) -> Tensor:
    r""":math:`\mathcal L_{nt} = -\frac1B\sum_b\sum_{c\ne y_b} q^{nt}_{bc}\,\log\mathrm{softmax}_{c\ne y_b}(z^s_b)`:
    cross-entropy against B×C labels ``nontarget_labels`` (0 at the target), the softmax taken over the non-target
    logits only."""
    mask = _target_mask(student_logits, labels)
    log_q = student_logits.masked_fill(mask, float("-inf")).log_softmax(1).masked_fill(mask, 0.0)
    return -(nontarget_labels * log_q).sum(1).mean()


# -- self-knowledge: the weak head -----------------------------------------------------------------------------
def weak_loss(head_logits: Tensor, labels: Tensor, smoothing: float = 0.1) -> Tensor:
    r"""The weak head's loss (without :math:`\mu`): cross-entropy to label-smoothed targets
    :math:`\tilde y = (1-\varepsilon)\,e_y + \varepsilon/C`, :math:`\varepsilon=0.1`:
    :math:`-\frac1B\sum_b\sum_c\tilde y_{bc}\log\mathrm{softmax}(h_b)_c`."""
    return F.cross_entropy(head_logits, labels, label_smoothing=smoothing)


class SelfKnowledge(NamedTuple):
    """The three self-knowledge losses (unweighted) and the labels they used."""

    target: Tensor
    non_target: Tensor
    weak: Tensor
    target_labels: Tensor
    nontarget_labels: Tensor


def self_knowledge_terms(student_logits: Tensor, head_logits: Tensor, labels: Tensor, ranking: Ranking = "log_probs",
                         smoothing: float = 0.1) -> SelfKnowledge:
    r"""JCS-MKD's self-knowledge from hard labels (docs/methods.md §5.4), each term unweighted:
    :math:`\mathcal L_t` (:func:`target_loss`), :math:`\mathcal L_{nt}` with Zipf labels ranked by
    :func:`ranking_scores` (:func:`nontarget_loss`) and the weak head's :func:`weak_loss`. The method combines
    them as :math:`\alpha_t\mathcal L_t + \beta_{nt}\mathcal L_{nt} + \mu\,\mathcal L_{weak}`."""
    q = zipf_nontarget_labels(ranking_scores(head_logits, student_logits, labels, ranking), labels)
    return SelfKnowledge(
        target=target_loss(student_logits, labels),
        non_target=nontarget_loss(student_logits, q, labels),
        weak=weak_loss(head_logits, labels, smoothing),
        target_labels=customised_target_label(student_logits, labels),
        nontarget_labels=q,
    )
