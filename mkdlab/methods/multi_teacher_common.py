"""Pieces shared by the CA-MKD-repo multi-teacher baselines (AVER-FitNet, EBKD, CA-MKD, AEKD).

* :func:`hint_regressors`: one FitNet :class:`~mkdlab.methods.adapters.ConvReg` per teacher, sized with
  :func:`~mkdlab.methods.base.probe_shapes` on a tap (``"hint"`` = RepDistiller's ``feat[2]``);
* :func:`feature_term_active`: the CA-MKD repo switches feature terms off during the first epoch (methods.md §2,
  §7 #4); ``feature_warmup_epochs`` generalises it;
* :func:`zero_term`: the value logged for a switched-off term (a constant: no graph, so adapters get no gradient);
* :func:`per_sample_mse`: mean over (c, h, w) for each sample (methods.md §1, "per-sample MSE").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mkdlab.methods.adapters import ConvReg
from mkdlab.models.summary import probe_shapes

_HALF = (torch.float16, torch.bfloat16)


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is half precision (bf16/fp16 under autocast), else unchanged (float64 stays)."""
    return x.float() if x.dtype in _HALF else x


def per_sample_mse(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """Per-sample MSE: ``(a − b)²`` averaged over every dimension but the first, shape (B,), computed in float32
    at least (under autocast the maps may be half precision)."""
    diff = at_least_float32(student_map) - at_least_float32(teacher_map)
    return diff.pow(2).flatten(1).mean(1)


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
