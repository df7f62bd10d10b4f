"""EBKD: entropy-based teacher weights (Kwon et al., ICASSP 2020), as implemented in the CA-MKD repo (§4.7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mkdlab.losses.multi_teacher import weighted_kd_loss
from mkdlab.losses.weightings import EntropyNorm, entropy_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method


@dataclass(frozen=True)
class EBKDParams:
    """CA-MKD repo script ``-r 1 -a 1 -b 0``: γ = α = 1, T = 4, entropies at temperature 1.

    ``weight_norm`` sets the sum of the *effective* per-sample weights (methods.md §7 #3): ``"per_K"`` (default,
    the official code: literal weights summing to K − 1, divided by K in the loss, so the sum is (K − 1)/K),
    ``"literal"`` (sum K − 1, EBKD/DE-MKD as written), ``"sum_to_one"`` or ``"softmax"`` (with ``rho``).
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    entropy_temperature: float = 1.0
    weight_norm: EntropyNorm = "per_K"
    rho: float = 1.0


@register_method("ebkd")
class EBKD(Distiller):
    r"""Entropy-weighted multi-teacher KD (methods.md §4.7):

    .. math::
        H_{kb} = -\sum_c p^k_{1,bc}\log p^k_{1,bc},\quad w_{kb} = 1 - \frac{H_{kb}}{\sum_j H_{jb}},\quad
        \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1{BK}\sum_b\sum_k w_{kb}\,\ell^{KL}_T(z^s,z^k)_b

    implemented as :math:`\frac1B\sum_{b,k}\tilde w_{kb}\ell_{kb}` with the effective weights
    :math:`\tilde w=` :func:`~mkdlab.losses.weightings.entropy_weights` (``norm=weight_norm``); the default
    ``"per_K"`` gives :math:`\tilde w = w/K` — exactly the official loss above. The weights depend on the
    teachers only (constants). Terms ``"ce"``, ``"kd"``.

    Extras: ``"teacher_weights"`` — the applied weights normalised to sum 1 per sample (the mixture the student
    is pulled towards, methods.md §1); ``"effective_teacher_weights"`` — the weights actually multiplying
    :math:`\ell_{kb}` (row sums (K − 1)/K by default).
    """

    Params = EBKDParams
    teachers_required = "many"
    needs_drop_last = True

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher_logits = self.teacher_logits(batch.images)
        logits = self.student(batch.images)
        weights = entropy_weights(teacher_logits.float(), p.entropy_temperature, p.weight_norm, p.rho)  # B×K
        kd = weighted_kd_loss(logits, teacher_logits, weights, p.temperature)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd},
            {"teacher_weights": weights / weights.sum(1, keepdim=True), "effective_teacher_weights": weights},
        )
