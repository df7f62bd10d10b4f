"""DE-MKD: decoupled multi-teacher KD based on entropy (Cheng et al., Mathematics 2024; methods.md §5.2).

No official code exists; DE-MKD is built on the CA-MKD-repo conventions (entropy weights of EBKD, per-teacher
ConvRegs on the hint map, per-sample MSE) plus mdistiller's DKD. The pure functions :func:`de_mkd_weights`,
:func:`de_mkd_kd_loss` and :func:`weighted_feature_loss` are the method's loss pieces (used by the notebook).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.divergences import dkd_terms, kd_loss
from mkdlab.losses.weights import EntropyNorm, entropy_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.multi_teacher_common import (
    feature_term_active,
    hint_regressors,
    per_sample_mse,
    zero_term,
)
from mkdlab.methods.registry import register_method
from mkdlab.typed import ConfigError

#: the sum S of the effective weights of one sample under each convention, for K teachers.
WEIGHT_SUMS = {"literal": lambda k: k - 1.0, "per_K": lambda k: (k - 1.0) / k, "sum_to_one": lambda k: 1.0,
               "softmax": lambda k: 1.0}


@dataclass(frozen=True)
class DEMKDParams:
    r"""The paper's hyper-parameters (§4.2 of Cheng et al.): τ = 4, γ = 1 (CE), α = 1 (KD), β = 100 (features),
    a = 1 (TCKD), b = 8 (NCKD).

    Open choices (methods.md §5.2 pitfalls):

    * ``weight_norm``: the entropy weights :math:`w_{kb}=1-H_{kb}/\sum_jH_{jb}` sum to :math:`K-1`; the effective
      weights :math:`\tilde w` are ``"literal"`` (:math:`w`, sum :math:`K-1`), ``"per_K"`` (:math:`w/K`, the
      CA-MKD-repo EBKD convention, sum :math:`(K-1)/K`), ``"sum_to_one"`` (:math:`w/(K-1)`, default) or
      ``"softmax"`` (:math:`\mathrm{softmax}_k(-H_{kb}/\rho)`, ``softmax_rho``; not in the paper). The first three
      differ only by a global factor on α and β.
    * ``entropy_temperature``: the temperature of the entropy (unstated; 1 as in EBKD's code, or τ).
    * ``dkd_warmup_epochs`` [ASSUMPTION]: DKD's linear warm-up :math:`\min((e+1)/W,1)` on :math:`\mathcal L_{KD}`
      (0-based epoch :math:`e`; 0 disables it), kept on by default because b = 8 makes the term large early on.
    * ``feature_warmup_epochs``: the CA-MKD repo's "no feature term in the first epoch(s)" (0 = off, default).

    Ablation switches (the paper's Table 4): ``use_entropy_weights=False`` gives equal weights (each :math:`S/K`,
    with :math:`S` the sum of the chosen convention, so that only the ratios change), ``decoupled=False`` replaces
    each teacher's DKD by vanilla KD :math:`\ell^{KL}_T`, ``use_features=False`` drops the feature term.
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    feat_weight: float = 100.0
    tckd_weight: float = 1.0
    nckd_weight: float = 8.0
    weight_norm: EntropyNorm = "sum_to_one"
    entropy_temperature: float = 1.0
    softmax_rho: float = 1.0
    dkd_warmup_epochs: int = 20
    feature_warmup_epochs: int = 0
    use_features: bool = True
    use_entropy_weights: bool = True
    decoupled: bool = True

    def __post_init__(self) -> None:
        for name in ("dkd_warmup_epochs", "feature_warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"method.params.{name}: must be >= 0 (0 disables it), got {getattr(self, name)}")
        for name in ("temperature", "entropy_temperature", "softmax_rho"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"method.params.{name}: must be > 0, got {getattr(self, name)}")
        if self.weight_norm not in WEIGHT_SUMS:
            raise ConfigError(f"method.params.weight_norm: choose one of {', '.join(WEIGHT_SUMS)}, "
                              f"got {self.weight_norm!r}")


def de_mkd_weights(teacher_logits: Tensor, norm: EntropyNorm = "sum_to_one", entropy_temperature: float = 1.0,
                   rho: float = 1.0, use_entropy: bool = True) -> Tensor:
    r"""Effective per-sample teacher weights :math:`\tilde w` (B×K) of DE-MKD from K×B×C teacher logits.

    With ``use_entropy`` the paper's Eq. 3 under the convention ``norm``
    (:func:`~mkdlab.losses.weights.entropy_weights`); otherwise equal weights :math:`S/K` with the same row sum
    :math:`S` (:math:`K-1`, :math:`(K-1)/K` or 1) as the convention. Raises ``ValueError`` for K < 2.
    """
    k = teacher_logits.shape[0]
    if k < 2:
        raise ValueError("DE-MKD needs at least two teachers: with K = 1 the entropy weight 1 - H/H is 0")
    if use_entropy:
        return entropy_weights(teacher_logits, entropy_temperature, norm, rho)
    b = teacher_logits.shape[1]
    return teacher_logits.new_full((b, k), WEIGHT_SUMS[norm](k) / k)


def per_teacher_kd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0,
                   tckd_weight: float = 1.0, nckd_weight: float = 8.0, decoupled: bool = True) -> Tensor:
    r"""K×B per-teacher, per-sample distillation terms :math:`d_{kb}`: :math:`a\,\mathrm{TCKD}_{kb}+b\,
    \mathrm{NCKD}_{kb}` (:func:`~mkdlab.losses.divergences.dkd_terms`, each with :math:`T^2`) or, with
    ``decoupled=False``, vanilla :math:`\ell^{KL}_T(z^s,z^k)_b`."""
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
    r""":math:`\mathcal L_{KD}=\frac1B\sum_b\sum_k\tilde w_{kb}\,(a\,\mathrm{TCKD}_{kb}+b\,\mathrm{NCKD}_{kb})`
    (Eq. 4) for K×B×C teacher logits and B×K weights (no warm-up factor, no α)."""
    d = per_teacher_kd(student_logits, teacher_logits, target, temperature, tckd_weight, nckd_weight, decoupled)
    return (weights.T * d).sum(0).mean()


def weighted_feature_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], weights: Tensor) -> Tensor:
    r""":math:`\mathcal L_{inter}=\frac1B\sum_b\sum_k\tilde w_{kb}\,\mathrm{mean}_{chw}(r_k(F^s)_b-F^k_b)^2`
    (Eq. 5) from the K regressed student maps, the K teacher maps and B×K weights (no β)."""
    mse = torch.stack([per_sample_mse(s, t) for s, t in zip(student_maps, teacher_maps, strict=True)])  # K×B
    return (weights.T * mse).sum(0).mean()


@register_method("de_mkd")
class DEMKD(Distiller):
    r"""Decoupled multi-teacher KD based on entropy (methods.md §5.2, paper Eqs. 3–7):

    .. math::
        H_{kb} = -\sum_c p^k_{bc}\log p^k_{bc},\qquad w_{kb} = 1-\frac{H_{kb}}{\sum_j H_{jb}},\qquad
        \tilde w = \text{``weight\_norm''}(w)

    .. math::
        \mathcal L = \gamma\,\mathrm{CE}
          + \alpha\,\omega(e)\,\frac1B\sum_{b,k}\tilde w_{kb}\,\big(a\,\mathrm{TCKD}_{kb}+b\,\mathrm{NCKD}_{kb}\big)
          + \beta\,\frac1B\sum_{b,k}\tilde w_{kb}\,\mathrm{mean}_{chw}\big(r_k(F^s_{\text{hint}})_b
          - F^k_{\text{hint},b}\big)^2

    with :math:`\omega(e)=\min((e+1)/W,1)` DKD's warm-up (``dkd_warmup_epochs``; 1 when 0) and :math:`r_k` one
    :class:`~mkdlab.methods.adapters.ConvReg` per teacher from the student's ``taps["hint"]`` map (RepDistiller's
    ``feat[2]``, "the second network block") to teacher :math:`k`'s. The weights depend on the teachers only
    (constants). The feature term is a constant 0 while the 0-based epoch is below ``feature_warmup_epochs``.
    Terms ``"ce"``, ``"kd"`` and, with ``use_features``, ``"feat"``. Extras: ``"teacher_weights"`` —
    :math:`\tilde w` normalised to sum 1 per sample (as ``ebkd`` logs), ``"effective_teacher_weights"`` —
    :math:`\tilde w` itself. Needs at least two teachers.
    """

    Params = DEMKDParams
    teachers_required = "many"
    needs_drop_last = True
    min_teachers = 2  # with K = 1 the entropy weight 1 - H/H is 0

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        self.regressors = hint_regressors(self.student, self.teachers) if self.params.use_features else None

    def warmup_factor(self, epoch: int) -> float:
        """DKD's ``min((epoch + 1) / dkd_warmup_epochs, 1)`` for the 0-based ``epoch``; 1 when disabled."""
        warmup = self.params.dkd_warmup_epochs
        return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)

    def weights(self, teacher_logits: Tensor) -> Tensor:
        """Effective weights :math:`\\tilde w` (B×K) for K×B×C teacher logits, under the method's params."""
        p = self.params
        return de_mkd_weights(teacher_logits.float(), p.weight_norm, p.entropy_temperature, p.softmax_rho,
                              p.use_entropy_weights)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        out = self.run_models(batch.images, maps=p.use_features)
        logits, teacher_logits, student_maps, teacher_maps = (out.logits, out.teacher_logits, out.student_maps,
                                                              out.teacher_maps)
        weights = self.weights(teacher_logits)  # B×K, constants
        kd = de_mkd_kd_loss(logits, teacher_logits, batch.labels, weights, p.temperature, p.tckd_weight,
                            p.nckd_weight, p.decoupled)
        losses = {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels),
                  "kd": p.kd_weight * self.warmup_factor(epoch) * kd}
        if p.use_features:
            if feature_term_active(epoch, p.feature_warmup_epochs):
                hint_map = student_maps[self.student.taps["hint"]]
                regressed = [regressor(hint_map) for regressor in self.regressors]
                targets = [maps[teacher.taps["hint"]] for teacher, maps in zip(self.teachers, teacher_maps,
                                                                                strict=True)]
                losses["feat"] = p.feat_weight * weighted_feature_loss(regressed, targets, weights)
            else:
                losses["feat"] = zero_term(logits)
        return StepOutput(
            logits, losses,
            {"teacher_weights": weights / weights.sum(1, keepdim=True), "effective_teacher_weights": weights},
        )
