"""DE-MKD: decoupled multi-teacher KD based on entropy (Cheng et al., Mathematics 2024; docs/methods.md §5.2).

No official code exists; DE-MKD is built on the CA-MKD-repo conventions (entropy weights of EBKD, per-teacher
ConvRegs on the hint map, per-sample MSE) plus mdistiller's DKD. The method's loss pieces are pure functions of
:mod:`mkdlab.losses` (used by the notebook): :func:`~mkdlab.losses.weightings.de_mkd_weights`,
:func:`~mkdlab.losses.multi_teacher.de_mkd_kd_loss` and :func:`~mkdlab.losses.features.weighted_feature_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.features import weighted_feature_loss
from mkdlab.losses.multi_teacher import de_mkd_kd_loss
from mkdlab.losses.precision import at_least_float32
from mkdlab.losses.weightings import WEIGHT_SUMS, EntropyNorm, de_mkd_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.feature_terms import (
    feature_term_active,
    hint_regressors,
    zero_term,
)
from mkdlab.methods.registry import register_method
from mkdlab.typed import ConfigError


@dataclass(frozen=True)
class DEMKDParams:
    r"""The paper's hyper-parameters (§4.2 of Cheng et al.): τ = 4, γ = 1 (CE), α = 1 (KD), β = 100 (features),
    a = 1 (TCKD), b = 8 (NCKD).

    Open choices (docs/methods.md §5.2 pitfalls):

    * ``weight_norm``: the entropy weights :math:`w_{kb}=1-H_{kb}/\sum_jH_{jb}` sum to :math:`K-1`; the effective
      weights :math:`\tilde w` are ``"literal"`` (:math:`w`, sum :math:`K-1`), ``"per_K"`` (:math:`w/K`, the
      CA-MKD-repo EBKD convention, sum :math:`(K-1)/K`), ``"sum_to_one"`` (:math:`w/(K-1)`) or
      ``"softmax"`` (:math:`\mathrm{softmax}_k(-H_{kb}/\rho)`, ``softmax_rho``; not in the paper). The first three
      differ only by a global factor on α and β. Default ``"literal"``: Eq. 3–4 as printed, so the paper's α, a, b
      and β act at the scale the paper states (``sum_to_one`` halves every KD and feature coefficient for K = 3).
    * ``entropy_temperature``: the temperature of the entropy. Default 1 (EBKD's code), chosen on evidence: the
      paper's softmax carries τ = 4, but at T = 4 the three shipped teachers' normalised weights are nearly uniform
      (mean per-sample max − min 0.022 vs 0.144 at T = 1 on the mini test set), and only T = 1 gives the right
      teacher more weight where the teachers disagree.
    * ``dkd_warmup_epochs`` [ASSUMPTION, mkdlab's choice: not in the paper]: DKD's linear warm-up
      :math:`\min((e+1)/W,1)` on :math:`\mathcal L_{KD}` (0-based epoch :math:`e`; 0 disables it), on by default
      because b = 8 makes the term large early on.
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
    weight_norm: EntropyNorm = "literal"
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


@register_method("de_mkd")
class DEMKD(Distiller):
    r"""Decoupled multi-teacher KD based on entropy (docs/methods.md §5.2, paper Eqs. 3–7):

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
        return de_mkd_weights(at_least_float32(teacher_logits), p.weight_norm, p.entropy_temperature, p.softmax_rho,
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
