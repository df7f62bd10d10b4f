"""Shapes of the named maps, parameter counts, multiply-accumulate counts and the zoo table of notebook 00.

Costs are reported in **MACs** (multiply-accumulates), the unit of the distillation papers' "FLOPs" columns:
:func:`count_flops` runs one forward pass under :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
convolutions and matrix products at 2 FLOPs per MAC, and returns its total divided by 2. BatchNorm, activations,
pooling and additions are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mkdlab.models.registry import available_models, create


@torch.no_grad()
def probe_shapes(model: nn.Module, image_size: int = 32) -> dict[str, torch.Size]:
    """Shapes of every named map of a zoo model for a batch of 2 images (to size adapters in ``__init__``).

    The model runs once in eval mode on zeros; its mode is restored.
    """
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    maps = model.forward_features(torch.zeros(2, in_channels, image_size, image_size, device=device))
    model.train(was_training)
    return {name: value.shape for name, value in maps.items()}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``); buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates (MACs = counted FLOPs / 2) of conv and linear layers for one forward pass.

    The model runs once in eval mode on zeros of ``input_shape`` (on the device of its parameters); its
    train/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def zoo_table(names: Sequence[str] | None = None, num_classes: int = 100, in_channels: int = 3) -> list[dict[str, Any]]:
    """One row per model (default: every registered model) on a 32×32 input.

    Keys: ``name``, ``params``, ``macs``, ``mmacs`` (millions), and the C×H×W shapes ``pre_pool``, ``hint``
    (``taps["hint"]``) and ``penultimate`` (``taps["penultimate"]``).
    """
    rows = []
    for name in names if names is not None else available_models():
        model = create(name, num_classes=num_classes, in_channels=in_channels).eval()
        macs = count_flops(model, (1, in_channels, 32, 32))
        feats = model.forward_features(torch.zeros(1, in_channels, 32, 32))
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "macs": macs,
                "mmacs": macs / 1e6,
                "pre_pool": tuple(feats["pre_pool"].shape[1:]),
                "hint": tuple(feats[model.taps["hint"]].shape[1:]),
                "penultimate": tuple(feats[model.taps["penultimate"]].shape[1:]),
            }
        )
    return rows
