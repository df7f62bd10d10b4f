r"""Per-sample teacher weightings of the multi-teacher methods (docs/methods.md §4.5–§4.8, §5.2), and a registry by
name.

Every weighting has one signature so that a method, or a notebook, can swap them: teacher logits stacked ``K×B×C``
(and the ``B`` labels) in, weights ``B×K`` out (row ``b`` holds the weight of every teacher for sample ``b``):

* :func:`average_weights` — AVER (all :math:`1/K`);
* :func:`entropy_weights` — EBKD (Kwon et al., ICASSP 2020) / DE-MKD: low-entropy teachers weigh more;
* :func:`confidence_weights` — CA-MKD (Zhang, Chen, Wang, ICASSP 2022): low cross-entropy teachers weigh more;
* :func:`de_mkd_weights` — DE-MKD's convention (Cheng et al., Mathematics 2024): entropy weights, or equal weights
  with the same row sum (:data:`WEIGHT_SUMS`) for the paper's ablation.

:func:`get_weighting` binds a weighting's hyper-parameters by name and returns a callable
``(teacher_logits, labels) -> B×K`` (:class:`BoundWeighting`); :func:`available_weightings` lists the names
(``aver``, ``confidence``, ``de_mkd``, ``entropy``). The plain functions keep their own signatures
(``entropy_weights(logits, temperature, norm)``); a bound weighting returns exactly what its plain function does.

Not in the registry, because they do not map teacher logits to per-sample weights: AMTML-KD's
:func:`importance_scores` (the student's pooled features and learned latent vectors in, scores out) and AEKD's
gradient-space solvers (:mod:`mkdlab.losses.aekd_solver`).

All functions are pure: nothing is detached, so weights computed from tensors that carry gradient (CA-MKD's
feature weights) keep it. Callers that want constants pass no-grad inputs. Weights computed from the logits
(entropy, confidence) are computed in float32 at least (half-precision logits under autocast are upcast).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mkdlab.losses.precision import at_least_float32

EntropyNorm = Literal["literal", "per_K", "sum_to_one", "softmax"]

#: the sum S of the effective weights of one sample under each convention of :func:`entropy_weights`, for K teachers.
WEIGHT_SUMS = {"literal": lambda k: k - 1.0, "per_K": lambda k: (k - 1.0) / k, "sum_to_one": lambda k: 1.0,
               "softmax": lambda k: 1.0}


def _check_logits(teacher_logits: Tensor) -> int:
    if teacher_logits.ndim != 3:
        raise ValueError(f"teacher logits must be stacked K×B×C, got shape {tuple(teacher_logits.shape)}")
    return teacher_logits.shape[0]


def average_weights(teacher_logits: Tensor) -> Tensor:
    r"""Equal weights :math:`w_{bk} = 1/K` (AVER, docs/methods.md §4.5), shape B×K.

    Args:
        teacher_logits: K×B×C teacher logits (only the shape, dtype and device are used).
    """
    k = _check_logits(teacher_logits)
    b = teacher_logits.shape[1]
    return torch.full((b, k), 1.0 / k, dtype=teacher_logits.dtype, device=teacher_logits.device)


def entropy_weights(teacher_logits: Tensor, temperature: float = 1.0, norm: EntropyNorm = "literal",
                    rho: float = 1.0) -> Tensor:
    r"""Entropy-based teacher weights of EBKD (Kwon et al., ICASSP 2020; docs/methods.md §4.7) and DE-MKD (§5.2).

    .. math::
        H_{kb} = -\sum_c p^k_{T,bc}\log p^k_{T,bc},\qquad
        w_{kb} = 1 - \frac{H_{kb}}{\sum_j H_{jb}}

    (natural log, :math:`p^k_T=\mathrm{softmax}(z^k/T)`), so a confident (low-entropy) teacher weighs more.
    The sum of the weights sets the effective KD coefficient (docs/methods.md §1), hence ``norm``:

    * ``"literal"``: :math:`w` as written; :math:`\sum_k w_{kb} = K-1` (EBKD in the CA-MKD repo, DE-MKD);
    * ``"per_K"``: :math:`w/K`, sum :math:`(K-1)/K` — the *effective* weights of the CA-MKD repo's EBKD, which
      divides the weighted loss by :math:`K` again;
    * ``"sum_to_one"``: :math:`w/(K-1)`, sum 1;
    * ``"softmax"``: :math:`\mathrm{softmax}_k(-H_{kb}/\rho)`, sum 1 (a smooth alternative, not from a paper).

    The first three differ only by a global scale. If every teacher has zero entropy for a sample
    (one-hot predictions), :math:`0/0` is avoided by clamping the denominator: each weight is then 1 (literal).

    Args:
        teacher_logits: K×B×C teacher logits (half precision is computed in float32).
        temperature: temperature of the softmax whose entropy is taken (1 in EBKD).
        norm: sum convention, see above.
        rho: temperature of the ``"softmax"`` normalisation.

    Returns:
        B×K weights.

    Raises:
        ValueError: for K = 1: entropy weights need at least two teachers (the single weight would be
            :math:`1 - H/H = 0`, which switches distillation off).
    """
    k = _check_logits(teacher_logits)
    if k < 2:
        raise ValueError("entropy weights need at least two teachers: with K = 1 the weight 1 - H/H is 0")
    log_p = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)  # K×B
    if norm == "softmax":
        return torch.softmax(-entropy / rho, dim=0).T
    total = entropy.sum(0, keepdim=True).clamp_min(torch.finfo(entropy.dtype).tiny)
    w = (1.0 - entropy / total).T  # B×K
    if norm == "literal":
        return w
    if norm == "per_K":
        return w / k
    if norm == "sum_to_one":
        return w / (k - 1)
    raise ValueError(f"unknown norm {norm!r}; choose literal, per_K, sum_to_one or softmax")


def confidence_weights(teacher_logits: Tensor, target: Tensor) -> Tensor:
    r"""Confidence-aware teacher weights of CA-MKD (Zhang, Chen, Wang, ICASSP 2022; docs/methods.md §4.8).

    .. math::
        \mathrm{ce}_{kb} = \mathrm{CE}(z^k_b, y_b)\ (T=1),\qquad
        w_{kb} = \frac{1 - \mathrm{softmax}_k(\mathrm{ce}_{\cdot b})_k}{K-1}

    (softmax over the teacher axis; CA-MKD ``models/util.py:CalWeight``). Each row sums to 1 and every weight
    lies in :math:`[0, 1/(K-1)]`; lower cross-entropy gives a higher weight. CA-MKD then divides the weighted loss
    by :math:`K` once more — that extra :math:`1/K` belongs to the method, not to these weights. Nothing is
    detached: CA-MKD's feature weights are computed from student-dependent logits and keep their gradient.

    Args:
        teacher_logits: K×B×C logits (teacher logits, or any K heads' logits; half precision is computed in
            float32).
        target: B hard labels.

    Returns:
        B×K weights.

    Raises:
        ValueError: for K = 1 (the formula divides by K − 1).
    """
    k = _check_logits(teacher_logits)
    if k < 2:
        raise ValueError("confidence weights need at least two teachers: the formula divides by K - 1")
    logits = at_least_float32(teacher_logits)
    ce = torch.stack([F.cross_entropy(z, target, reduction="none") for z in logits])  # K×B
    return ((1.0 - torch.softmax(ce, dim=0)) / (k - 1)).T


def de_mkd_weights(teacher_logits: Tensor, norm: EntropyNorm = "literal", entropy_temperature: float = 1.0,
                   rho: float = 1.0, use_entropy: bool = True) -> Tensor:
    r"""Effective per-sample teacher weights :math:`\tilde w` (B×K) of DE-MKD (Cheng et al., Mathematics 2024;
    docs/methods.md §5.2) from K×B×C teacher logits.

    With ``use_entropy`` the paper's Eq. 3 under the convention ``norm`` (:func:`entropy_weights`); otherwise
    equal weights :math:`S/K` with the same row sum :math:`S` (:data:`WEIGHT_SUMS`: :math:`K-1`,
    :math:`(K-1)/K` or 1) as the convention — the paper's "without entropy weights" ablation, in which only the
    ratios change. Raises ``ValueError`` for K < 2.
    """
    k = teacher_logits.shape[0]
    if k < 2:
        raise ValueError("DE-MKD needs at least two teachers: with K = 1 the entropy weight 1 - H/H is 0")
    if use_entropy:
        return entropy_weights(teacher_logits, entropy_temperature, norm, rho)
    b = teacher_logits.shape[1]
    return teacher_logits.new_full((b, k), WEIGHT_SUMS[norm](k) / k)


# -- learned importances (AMTML-KD): not a registered weighting ---------------------------------------------------


def importance_scores(v: Tensor, theta: Tensor, w: Tensor) -> Tensor:
    r"""AMTML-KD's instance-level teacher scores (Liu, Zhang, Wang, Neurocomputing 2020; docs/methods.md §5.1).

    .. math:: s_{bk}=\sum_c v_{bc}\,\theta_{kc}\,W_c

    from the student's pooled features :math:`v` (B×d), the teachers' latent vectors :math:`\Theta` (K×d) and the
    shared projection :math:`W` (d), all learned: B×K scores, whose softmax over :math:`k` gives the importances.
    Not in the registry: it does not take teacher logits but trainable tensors of the method.
    """
    return v @ (theta * w).T


# -- the registry --------------------------------------------------------------------------------------------------

#: a per-sample weighting: ``(teacher_logits K×B×C, labels B) -> weights B×K``.
Weighting = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class _Registered:
    """A plain weighting function; ``takes_labels``: its second positional argument is the labels."""

    function: Callable[..., Tensor]
    takes_labels: bool

    def hyper_parameters(self) -> dict[str, Any]:
        """The keyword hyper-parameters of the function and their defaults."""
        data_arguments = 2 if self.takes_labels else 1
        parameters = list(inspect.signature(self.function).parameters.values())[data_arguments:]
        return {parameter.name: parameter.default for parameter in parameters}


_WEIGHTINGS: dict[str, _Registered] = {
    "aver": _Registered(average_weights, takes_labels=False),
    "confidence": _Registered(confidence_weights, takes_labels=True),
    "de_mkd": _Registered(de_mkd_weights, takes_labels=False),
    "entropy": _Registered(entropy_weights, takes_labels=False),
}


@dataclass(frozen=True)
class BoundWeighting:
    """A registered weighting with every hyper-parameter bound (built by :func:`get_weighting`).

    Called as ``weighting(teacher_logits, labels)`` (K×B×C, B) it returns the B×K weights of its plain function
    (``labels`` is ignored by the weightings that do not use it).
    """

    name: str
    hyper_parameters: Mapping[str, Any]

    def __call__(self, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        registered = _WEIGHTINGS[self.name]
        if registered.takes_labels:
            return registered.function(teacher_logits, labels, **self.hyper_parameters)
        return registered.function(teacher_logits, **self.hyper_parameters)


def available_weightings() -> list[str]:
    """Every registered weighting name, sorted."""
    return sorted(_WEIGHTINGS)


def get_weighting(name: str, **hyper_parameters: Any) -> BoundWeighting:
    """The weighting registered as ``name`` with ``hyper_parameters`` bound (the others at their defaults).

    ``get_weighting("entropy", temperature=1.0, norm="per_K")`` is EBKD's; ``"aver"`` and ``"confidence"`` take
    no hyper-parameter; ``"de_mkd"`` takes ``norm``, ``entropy_temperature``, ``rho`` and ``use_entropy``.

    Raises:
        ValueError: for an unknown name, an unknown hyper-parameter or a value outside a hyper-parameter's
            choices (e.g. ``norm``); the message lists the valid ones.
    """
    if name not in _WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(available_weightings())}")
    registered = _WEIGHTINGS[name]
    defaults = registered.hyper_parameters()
    unknown = sorted(set(hyper_parameters) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) if defaults else "none (it takes no hyper-parameter)"
        raise ValueError(f"weighting {name!r} has no hyper-parameter {unknown[0]!r}; valid: {valid}")
    hints = typing.get_type_hints(registered.function)
    for key, value in hyper_parameters.items():
        choices = typing.get_args(hints[key]) if typing.get_origin(hints[key]) is Literal else ()
        if choices and value not in choices:
            raise ValueError(f"weighting {name!r}: {key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return BoundWeighting(name, {**defaults, **hyper_parameters})


__all__ = [
    "WEIGHT_SUMS",
    "BoundWeighting",
    "EntropyNorm",
    "Weighting",
    "available_weightings",
    "average_weights",
    "confidence_weights",
    "de_mkd_weights",
    "entropy_weights",
    "get_weighting",
    "importance_scores",
]
