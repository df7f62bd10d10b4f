"""CIFAR ResNets of RepDistiller (``models/resnet.py``), as used by CA-MKD and MMKD.

Basic blocks with a 1×1-conv + BN projection shortcut (``downsample``) wherever the shape changes; module names
``conv1, bn1, layer1..3, fc`` match RepDistiller so its checkpoints load with ``strict=True``.
``resnet{8,20,32,56,110}`` use widths 16/16/32/64, ``resnet{8,20,32}x4`` use 32/64/128/256.

RepDistiller's ``is_feat`` list ``[f0, f1, f2, f3, f4]`` is ``feat_names = ("stem", "stage1", "stage2",
"stage3", "pooled")``: ``f0`` = conv-BN-ReLU stem, ``f1..f3`` = stage outputs after the last ReLU, ``f4`` = the
pooled vector. ``"stageK_preact"`` is the last block's pre-ReLU sum (RepDistiller's ``preact=True``).
``feat[-2]`` = ``"stage3"`` = ``"pre_pool"`` in RepDistiller, CA-MKD and MMKD alike; hint ``feat[2]`` = ``"stage2"``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models.common import (
    PreactBlock,
    Stage,
    ZooModel,
    init_repdistiller,
    make_taps,
    projection,
    stem_and_stages,
)
from mkdlab.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(PreactBlock):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``downsample`` is ``None`` or conv1×1-BN."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection(inplanes, planes, stride) if stride != 1 or inplanes != planes else None

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class ResNet(ZooModel):
    """RepDistiller CIFAR ResNet of ``depth = 6n + 2`` with stem/stage widths ``num_filters``."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "pooled")
    stage_names = ("stage1", "stage2", "stage3")
    taps = make_taps("stage3")

    def __init__(
        self, depth: int, num_filters: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[1], num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[2], num_filters[3], n, stride=2)
        self.fc = nn.Linear(num_filters[3], num_classes)
        init_repdistiller(self)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> Stage:
        layers = [BasicBlock(inplanes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return Stage(*layers)

    def fc_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats, x = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3))
        return self._head(feats, x)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-8, widths 16/16/32/64 (0.08M parameters for 100 classes)."""
    return ResNet(8, _NARROW, num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-20, widths 16/16/32/64 (0.28M)."""
    return ResNet(20, _NARROW, num_classes, in_channels)


@register_model("resnet32")
def resnet32(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-32, widths 16/16/32/64 (0.47M)."""
    return ResNet(32, _NARROW, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-56, widths 16/16/32/64 (0.86M)."""
    return ResNet(56, _NARROW, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-110, widths 16/16/32/64 (1.74M)."""
    return ResNet(110, _NARROW, num_classes, in_channels)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-8x4, widths 32/64/128/256 (1.23M)."""
    return ResNet(8, _WIDE, num_classes, in_channels)


@register_model("resnet20x4")
def resnet20x4(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-20x4, widths 32/64/128/256 (4.33M; CA-MKD/MMKD zoo only)."""
    return ResNet(20, _WIDE, num_classes, in_channels)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-32x4, widths 32/64/128/256 (7.43M)."""
    return ResNet(32, _WIDE, num_classes, in_channels)
