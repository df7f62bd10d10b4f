"""Trainable adapters that map student maps onto teacher maps (docs/methods.md §1, "Shared adapter modules")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn


class ConvReg(nn.Module):
    """FitNet's convolutional regressor (RepDistiller ``models/util.py``, identical in mdistiller).

    Chosen from the student/teacher spatial sizes ``s_H``, ``t_H``: ``s_H = 2 t_H`` → 3×3 conv, stride 2, pad 1;
    ``2 s_H = t_H`` → 4×4 transposed conv, stride 2, pad 1; ``s_H ≥ t_H`` → a conv with kernel
    ``(1 + s_H − t_H) × (1 + s_W − t_W)`` (1×1 when the sizes match); then BatchNorm(t_C) and, with ``use_relu``, a
    ReLU (so the output is non-negative like the post-ReLU teacher maps). Convs keep PyTorch's default bias.

    ``variant="camkd"`` is the CA-MKD/MMKD copy: where RepDistiller raises (the student map is smaller than half
    the teacher's), it upsamples the student bilinearly to the teacher size when ``4 s_H = t_H`` and applies a
    3×3 conv, stride 1, pad 1 (our reading of that copy).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], use_relu: bool = True,
                 variant: Literal["repdistiller", "camkd"] = "repdistiller") -> None:
        super().__init__()
        _, s_c, s_h, s_w = student_shape
        _, t_c, t_h, t_w = teacher_shape
        self.upsample_to: tuple[int, int] | None = None
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        elif variant == "camkd":
            if 4 * s_h == t_h:
                self.upsample_to = (t_h, t_w)
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=1, padding=1)
        else:
            raise ValueError(
                f"ConvReg cannot map a {s_h}×{s_w} student map onto a {t_h}×{t_w} teacher map; choose another "
                f"hint layer or variant='camkd'"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample_to is not None:
            x = F.interpolate(x, size=self.upsample_to, mode="bilinear", align_corners=False)
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(c_out), nn.ReLU()]


class Embed(nn.Sequential):
    """CA-MKD/MMKD feature embed: Conv1×1(c_s→c_t, bias) → BN → ReLU.

    With ``convs=True``: Conv1×1(c_s→c_s/2)+BN+ReLU → Conv3×3(pad 1)+BN+ReLU → Conv1×1(→c_t)+BN+ReLU
    (the "convs" variant that MMKD's ``--convs`` flag asks for and the official code never builds).
    """

    def __init__(self, student_channels: int, teacher_channels: int, convs: bool = False) -> None:
        if convs:
            mid = max(student_channels // 2, 1)
            layers = [*_conv_bn_relu(student_channels, mid), *_conv_bn_relu(mid, mid, 3),
                      *_conv_bn_relu(mid, teacher_channels)]
        else:
            layers = _conv_bn_relu(student_channels, teacher_channels)
        super().__init__(*layers)
