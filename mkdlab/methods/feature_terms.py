"""Method-side helpers of the feature terms of the multi-teacher methods (AVER-FitNet, CA-MKD, AEKD, DE-MKD, MMKD).

* :func:`tap_shape`, :func:`hint_regressors`: adapters sized from the maps a tap names — one FitNet
  :class:`~mkdlab.methods.adapters.ConvReg` per teacher, sized with :func:`~mkdlab.models.summary.probe_shapes`
  (``"hint"`` = RepDistiller's ``feat[2]``);
* :func:`feature_term_active`: the CA-MKD repo switches feature terms off during the first epoch (docs/methods.md §2,
  §7 #4); ``feature_warmup_epochs`` generalises it;
* :func:`zero_term`: the value logged for a switched-off term (a constant: no graph, so adapters get no gradient).

The feature losses themselves are pure functions of :mod:`mkdlab.losses.features`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mkdlab.methods.adapters import ConvReg
from mkdlab.models.summary import probe_shapes


def tap_shape(model: nn.Module, tap: str) -> torch.Size:
    """Shape (for a batch of 2 images) of the map named by ``model.taps[tap]``."""
    return probe_shapes(model)[model.taps[tap]]


def hint_regressors(student: nn.Module, teachers: Sequence[nn.Module], tap: str = "hint") -> nn.ModuleList:
    """One :class:`ConvReg` per teacher from the student's ``taps[tap]`` map to that teacher's ``taps[tap]`` map."""
    student_shape = tap_shape(student, tap)
    return nn.ModuleList(ConvReg(student_shape, tap_shape(teacher, tap)) for teacher in teachers)


def feature_term_active(epoch: int, warmup_epochs: int) -> bool:
    """Whether a feature term is on during the 0-based ``epoch`` (off while ``epoch < warmup_epochs``)."""
    return epoch >= warmup_epochs


def zero_term(reference: Tensor) -> Tensor:
    """A scalar 0 without autograd history, logged in place of a switched-off term."""
    return reference.new_zeros(()).float()
