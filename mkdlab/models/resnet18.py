"""CIFAR ResNet-18 backbone used by DTSKD, in kuangliu's ``pytorch-cifar`` form (``models/resnet.py``).

3×3 stride-1 stem without max-pool, four stages of two basic blocks (64/128/256/512 channels, strides 1/2/2/2:
32/16/8/4 px), global average pool and a linear classifier. Module names follow kuangliu: ``conv1, bn1,
layer1..4, linear`` and ``shortcut`` (an empty sequential, or 1×1 conv + BN) in the blocks. PyTorch's default
initialisation, as in kuangliu's code. DTSKD's multi-branch heads are built on top of this backbone elsewhere.

Named maps follow the zoo convention; there is no RepDistiller ``is_feat`` list for this model, so ``feat_names``
extends the ResNet one with the fourth stage: ``("stem", "stage1", "stage2", "stage3", "stage4", "pooled")``,
giving hint ``feat[2]`` = ``"stage2"`` (128×16×16) and ``feat[-2]`` = ``"stage4"`` = ``"pre_pool"`` (512×4×4).
``"stageK_preact"`` is the last block's pre-ReLU sum.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models.common import PreactBlock, Stage, ZooModel, make_taps, projection, stem_and_stages
from mkdlab.models.registry import register_model


class BasicBlock(PreactBlock):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with kuangliu's module names."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Sequential()

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class ResNet18(ZooModel):
    """CIFAR ResNet-18 (11.2M parameters for 100 classes)."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
    stage_names = ("stage1", "stage2", "stage3", "stage4")
    taps = make_taps("stage4")
    widths = (64, 128, 256, 512)

    def __init__(self, num_classes: int = 100, in_channels: int = 3, num_blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip(self.widths, num_blocks, strict=True)):
            layers = [BasicBlock(in_planes, planes, 1 if i == 0 else 2)]
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            stages.append(Stage(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def fc_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats, x = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3, self.layer4))
        return self._head(feats, x)


@register_model("resnet18")
def resnet18(num_classes: int = 100, in_channels: int = 3) -> ResNet18:
    """CIFAR ResNet-18 backbone of DTSKD (11,220,132 parameters for 100 classes)."""
    return ResNet18(num_classes, in_channels)
