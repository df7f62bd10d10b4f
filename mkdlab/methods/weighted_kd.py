r"""Weighted multi-teacher KD: one method, any per-sample teacher weighting; AVER-KD and EBKD are two of its presets.

.. math::
    \mathcal L = \gamma\,\mathrm{CE}(z^s, y) + \alpha\,\frac1B\sum_b\sum_k w_{bk}\,\ell^{KL}_T(z^s,z^k)_b,\qquad
    w = \mathrm{weighting}(z^{1..K}, y)

(:func:`~mkdlab.losses.multi_teacher.weighted_kd`, docs/methods.md §1). AVER-KD and EBKD differ only in the weighting,
so they are this one class with another default (:func:`~mkdlab.losses.weightings.get_weighting` by name):

* :class:`WeightedKD` (``weighted_kd``): the weighting by name, ``weighting`` + ``weighting_params``;
* :class:`AverKD` (``aver_kd``): ``aver``, equal weights (docs/methods.md §4.5);
* :class:`EBKD` (``ebkd``): ``entropy`` with EBKD's parameters (docs/methods.md §4.7).

CA-MKD's logit branch is the same loss with the ``confidence`` weighting and one more :math:`1/K`
(:class:`~mkdlab.methods.ca_mkd.CAMKD`, which adds a feature branch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.multi_teacher import weighted_kd
from mkdlab.losses.weightings import BoundWeighting, EntropyNorm, get_weighting
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method
from mkdlab.typed import ConfigError


@dataclass(frozen=True)
class KDCoefficients:
    """γ = ``ce_weight``, α = ``kd_weight`` and the temperature T of a weighted-KD method (CA-MKD repo: 1, 1, 4);
    subclasses say which weighting they use (:meth:`build_weighting`)."""

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0

    def build_weighting(self) -> BoundWeighting:
        """The weighting these parameters name, its hyper-parameters bound."""
        raise NotImplementedError


@dataclass(frozen=True)
class WeightedKDParams(KDCoefficients):
    """Any registered weighting by name (:func:`~mkdlab.losses.weightings.available_weightings`: ``aver``,
    ``confidence``, ``de_mkd``, ``entropy``) with its hyper-parameters, e.g. ``weighting: entropy``,
    ``weighting_params: {temperature: 1.0, norm: per_K}`` (= ``ebkd``). An unknown name or hyper-parameter is a
    :class:`~mkdlab.typed.ConfigError` listing the valid ones."""

    weighting: str = "aver"
    weighting_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.build_weighting()
        except ValueError as err:
            raise ConfigError(f"method.params.weighting: {err}") from None

    def build_weighting(self) -> BoundWeighting:
        return get_weighting(self.weighting, **self.weighting_params)


@dataclass(frozen=True)
class AverKDParams(KDCoefficients):
    """AVER-KD as run in the CA-MKD repository (docs/methods.md §4.5): γ = α = 1, T = 4, the ``aver`` weighting."""

    def build_weighting(self) -> BoundWeighting:
        return get_weighting("aver")


@dataclass(frozen=True)
class EBKDParams(KDCoefficients):
    """CA-MKD repo script ``-r 1 -a 1 -b 0``: γ = α = 1, T = 4, entropies at temperature 1 (the ``entropy``
    weighting).

    ``weight_norm`` sets the sum of the *effective* per-sample weights (docs/methods.md §7 #3): ``"per_K"`` (default,
    the official code: literal weights summing to K − 1, divided by K in the loss, so the sum is (K − 1)/K),
    ``"literal"`` (sum K − 1, EBKD/DE-MKD as written), ``"sum_to_one"`` or ``"softmax"`` (with ``rho``).
    """

    entropy_temperature: float = 1.0
    weight_norm: EntropyNorm = "per_K"
    rho: float = 1.0

    def build_weighting(self) -> BoundWeighting:
        return get_weighting("entropy", temperature=self.entropy_temperature, norm=self.weight_norm, rho=self.rho)


@register_method("weighted_kd")
class WeightedKD(Distiller):
    r"""Weighted multi-teacher KD with the weighting of its parameters (module docstring):

    .. math:: \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1B\sum_b\sum_k w_{bk}\,\ell^{KL}_T(z^s,z^k)_b

    The weights depend on the teachers (and labels) only: constants. Terms ``"ce"``, ``"kd"``. Extras:
    ``"teacher_weights"`` — the applied weights normalised to sum 1 per sample (the mixture the student is pulled
    towards, docs/methods.md §1); ``"effective_teacher_weights"`` — the weights actually multiplying
    :math:`\ell_{bk}`. A subclass whose weighting sums to 1 by construction (``weights_sum_to_one``) logs its
    weights as they are, as ``"teacher_weights"`` only.
    """

    Params = WeightedKDParams
    teachers_required = "many"
    needs_drop_last = True
    #: the weighting's rows sum to 1 by construction: log them unchanged, without ``effective_teacher_weights``.
    weights_sum_to_one: ClassVar[bool] = False

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        self.weighting = self.params.build_weighting()

    def weight_extras(self, weights: Tensor) -> dict[str, Tensor]:
        """The extras logged for the B×K weights (see the class docstring)."""
        if self.weights_sum_to_one:
            return {"teacher_weights": weights}
        return {"teacher_weights": weights / weights.sum(1, keepdim=True), "effective_teacher_weights": weights}

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        teacher_logits = self.teacher_logits(batch.images)
        logits = self.student(batch.images)
        kd, weights = weighted_kd(logits, teacher_logits, batch.labels, self.weighting, p.temperature)
        return StepOutput(
            logits,
            {"ce": p.ce_weight * F.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd},
            self.weight_extras(weights),
        )


@register_method("aver_kd")
class AverKD(WeightedKD):
    r"""Equal-weight multi-teacher KD, averaging the K losses (docs/methods.md §4.5): :class:`WeightedKD` with ``aver``.

    .. math:: \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1K\sum_k \frac1B\sum_b \ell^{KL}_T(z^s, z^k)_b

    Its gradient equals KD towards the averaged teacher distribution (docs/methods.md §1). Logs the (uniform) teacher
    weights so it plots like the weighting methods.
    """

    Params = AverKDParams
    weights_sum_to_one = True


@register_method("ebkd")
class EBKD(WeightedKD):
    r"""Entropy-weighted multi-teacher KD (Kwon et al., ICASSP 2020; docs/methods.md §4.7): :class:`WeightedKD` with
    ``entropy``.

    .. math::
        H_{kb} = -\sum_c p^k_{1,bc}\log p^k_{1,bc},\quad w_{kb} = 1 - \frac{H_{kb}}{\sum_j H_{jb}},\quad
        \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\frac1{BK}\sum_b\sum_k w_{kb}\,\ell^{KL}_T(z^s,z^k)_b

    implemented as :math:`\frac1B\sum_{b,k}\tilde w_{kb}\ell_{kb}` with the effective weights
    :math:`\tilde w=` :func:`~mkdlab.losses.weightings.entropy_weights` (``norm=weight_norm``); the default
    ``"per_K"`` gives :math:`\tilde w = w/K` — exactly the official loss above. Terms ``"ce"``, ``"kd"``; extras
    ``"teacher_weights"`` (normalised) and ``"effective_teacher_weights"`` (row sums (K − 1)/K by default).
    """

    Params = EBKDParams
