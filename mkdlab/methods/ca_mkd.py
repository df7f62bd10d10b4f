"""CA-MKD: confidence-aware multi-teacher KD (Zhang, Chen, Wang, ICASSP 2022; docs/methods.md §4.8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.losses.features import per_sample_mse, resize_to
from mkdlab.losses.multi_teacher import weighted_kd
from mkdlab.losses.weightings import confidence_weights, get_weighting
from mkdlab.methods.adapters import Embed
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.feature_terms import (
    feature_term_active,
    tap_shape,
    zero_term,
)
from mkdlab.methods.registry import register_method

TAP = "penultimate_camkd"
#: the logit branch's weighting: the registry's ``confidence`` (weights from the teachers' cross-entropies).
LOGIT_WEIGHTING = get_weighting("confidence")


@dataclass(frozen=True)
class CAMKDParams:
    """CA-MKD repo script ``-r 1 -a 1 -b 50``: γ = α = 1, β = 50, T = 4; feature term off in epoch 1.

    ``parity=True`` reproduces the official cumulative resizing of the student map across heterogeneous teachers
    (docs/methods.md §4.8 departure, §7 #13); identical to the default when every teacher map has the same size.
    ``convs`` builds the three-conv Embed variant (not used by the official scripts).
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    feat_weight: float = 50.0
    feature_warmup_epochs: int = 1
    convs: bool = False
    parity: bool = False


@register_method("ca_mkd")
class CAMKD(Distiller):
    r"""Confidence-aware multi-teacher KD (docs/methods.md §4.8).

    Logit branch, with :func:`~mkdlab.losses.weightings.confidence_weights` (teacher cross-entropies, constants):

    .. math::
        w_{kb} = \frac{1-\mathrm{softmax}_k(\mathrm{CE}(z^k_b,y_b))}{K-1},\qquad
        \mathcal L_{KD} = \frac1{BK}\sum_{b,k} w_{kb}\,\ell^{KL}_T(z^s,z^k)_b

    The weights sum to 1 and the loss divides by :math:`K` once more — kept as in the official code (effective
    KD coefficient :math:`1/K`, docs/methods.md §1). This branch is the weighted KD of ``aver_kd`` and ``ebkd``
    (:func:`~mkdlab.losses.multi_teacher.weighted_kd`, :class:`~mkdlab.methods.weighted_kd.WeightedKD`) with the
    registry's ``confidence`` weighting and that extra :math:`1/K` (``mean_over_teachers``).

    Feature branch: :math:`G` = the student's ``taps["penultimate_camkd"]`` map (CA-MKD's ``feat[-2]``); for
    teacher :math:`k` (map :math:`F^k` of shape :math:`c_k\times H_k\times W_k` on the same tap) the student map is
    pooled (:math:`H_s\ge H_k`) or bilinearly upsampled to :math:`H_k\times W_k` — from the original :math:`G` for
    every teacher (``parity=True``: from the previous teacher's resized map, as the official loop does) — then
    :math:`\tilde F_k=\mathrm{Embed}_k(\cdot)` (Conv1×1 + BN + ReLU, :math:`c_s\to c_k`). The teacher's own head
    gives :math:`u_k`: we apply the teacher's global average pool and ``fc_layer()`` directly to
    :math:`\tilde F_k`, which is what the official ``distill_seq()[-1]`` (avg-pool, flatten, FC) does. For
    ResNets/VGG/ShuffleNets this equals ``teacher.classifier_head``; for WRN teachers it skips the final
    BN + ReLU that ``classifier_head`` would expect (their ``"pre_pool"`` is ``relu(bn1(stage3))``, not the
    tap), and teachers whose FC does not take :math:`c_k` inputs (MobileNetV2: 160-channel tap, 1280-input FC)
    are refused. Then

    .. math::
        v_{kb} = \frac{1-\mathrm{softmax}_k(\mathrm{CE}(u_{kb},y_b))}{K-1},\qquad
        \mathcal L_{feat} = \frac1{BK}\sum_{b,k} v_{kb}\,\mathrm{mean}_{chw}(\tilde F_{k,b}-F^k_b)^2

    with **no stop-gradient** on :math:`v` (gradients reach the embeds and the student through :math:`u`); the
    teacher heads are frozen teacher parameters (no ``.grad``). Total
    :math:`\gamma\,\mathrm{CE}+\alpha\mathcal L_{KD}+\beta\mathcal L_{feat}`, the feature term omitted (a constant
    0) while the 0-based epoch is below ``feature_warmup_epochs``. Terms ``"ce"``, ``"kd"``, ``"feat"``.
    Extras: ``"teacher_weights"`` (:math:`w`, B×K, rows sum to 1) and, when the feature term is on,
    ``"feature_weights"`` (:math:`v`, detached).
    """

    Params = CAMKDParams
    teachers_required = "many"
    needs_drop_last = True
    min_teachers = 2

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        student_channels = tap_shape(self.student, TAP)[1]
        embeds = []
        for teacher in self.teachers:
            channels = tap_shape(teacher, TAP)[1]
            fc = teacher.fc_layer()
            if fc.in_features != channels:
                raise ValueError(
                    f"CA-MKD applies each teacher's pooled FC to its {TAP!r} map, but {type(teacher).__name__}'s "
                    f"FC takes {fc.in_features} inputs and that map has {channels} channels (the official code has "
                    f"no head for this teacher either)"
                )
            embeds.append(Embed(student_channels, channels, convs=self.params.convs))
        self.embeds = nn.ModuleList(embeds)

    @staticmethod
    def teacher_head(teacher: nn.Module, feature_map: Tensor) -> Tensor:
        """Teacher logits from an embedded map: the teacher's global average pool, flatten and FC."""
        return teacher.fc_layer()(teacher.global_pool(feature_map))

    def embedded_maps(self, student_map: Tensor, teacher_maps: list[Tensor]) -> list[Tensor]:
        """:math:`\\tilde F_k` for every teacher (resize then embed; cumulative resizing with ``parity``)."""
        out, current = [], student_map
        for embed, target in zip(self.embeds, teacher_maps, strict=True):
            source = current if self.params.parity else student_map
            current = resize_to(source, tuple(target.shape[-2:]))
            out.append(embed(current))
        return out

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        out = self.run_models(batch.images)
        logits, teacher_logits, student_maps, teacher_maps = (out.logits, out.teacher_logits, out.student_maps,
                                                              out.teacher_maps)
        batch_size, k = logits.shape[0], len(teacher_maps)
        labels = batch.labels

        kd, weights = weighted_kd(logits, teacher_logits, labels, LOGIT_WEIGHTING, p.temperature,
                                  mean_over_teachers=True)  # B×K weights, constants; the extra 1/K of the repo
        losses = {"ce": p.ce_weight * F.cross_entropy(logits, labels), "kd": p.kd_weight * kd}
        extras = {"teacher_weights": weights}

        if feature_term_active(epoch, p.feature_warmup_epochs):
            targets = [maps[teacher.taps[TAP]] for teacher, maps in zip(self.teachers, teacher_maps, strict=True)]
            embedded = self.embedded_maps(student_maps[self.student.taps[TAP]], targets)
            head_logits = torch.stack([self.teacher_head(teacher, f) for teacher, f in
                                       zip(self.teachers, embedded, strict=True)])
            feature_weights = confidence_weights(head_logits.float(), labels)  # B×K, with gradient
            mse = torch.stack([per_sample_mse(f, t) for f, t in zip(embedded, targets, strict=True)])  # K×B
            losses["feat"] = p.feat_weight * (feature_weights.T * mse).sum() / (batch_size * k)
            extras["feature_weights"] = feature_weights.detach()
        else:
            losses["feat"] = zero_term(logits)
        return StepOutput(logits, losses, extras)
