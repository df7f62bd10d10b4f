"""Which device a run uses: ``train.device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``), the one rule every
command and the trainer apply."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
