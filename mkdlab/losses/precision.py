"""Numerical precision of the loss pieces: half-precision inputs (under autocast) are computed in float32."""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is half precision (bf16/fp16 under autocast), else unchanged (float64 stays)."""
    return x.float() if x.dtype in _HALF else x


__all__ = ["at_least_float32"]
