"""ShuffleNets of RepDistiller: ``ShuffleV1`` (``models/ShuffleNetv1.py``, groups 3) and ``ShuffleV2``
(``models/ShuffleNetv2.py``, net_size 1).

Both have a 1×1 conv-BN-ReLU stem (``conv1, bn1``; 24×32×32, stride 1), three stages ``layer1..3`` that halve the
resolution and a ``linear`` classifier; ShuffleV2 adds a 1×1 conv-BN-ReLU ``conv2, bn2`` to 1024 channels before
pooling. Names match RepDistiller so its checkpoints load with ``strict=True``. The parameter-free
``ShuffleBlock``/``SplitBlock`` modules are the function :func:`~mkdlab.models.common.channel_shuffle` and
``chunk(2, dim=1)``.

RepDistiller's ``is_feat`` list ``[f0, …, f4]`` is ``feat_names = ("stem", "stage1", "stage2", "stage3",
"pooled")`` for both. ``"stageK_preact"`` is the pre-activation RepDistiller returns for the last block of a stage:

* ShuffleV1: the pre-ReLU sum (or concatenation for the stride-2 block) of that block;
* ShuffleV2: ``cat([x1, bn3(…)])`` before the ReLU on the branch *and before the channel shuffle*, so its channel
  order differs from ``"stageK"`` (as in RepDistiller).

Maps (3×32×32 input): ShuffleV1 24×32², 240×16², 480×8², 960×4², pooled 960, ``"pre_pool"`` = ``"stage3"``.
ShuffleV2 24×32², 116×16², 232×8², 464×4², ``"pre_pool"`` = ``relu(bn2(conv2(stage3)))`` 1024×4², pooled 1024.

Repository difference (ShuffleV2 only): ``feat[-2]`` is ``"stage3"`` (464×4×4) in RepDistiller
(``taps["penultimate"]``) but ``"pre_pool"`` (1024×4×4) in CA-MKD and MMKD (``taps["penultimate_camkd"]``,
``taps["penultimate_mmkd"]``). Hint ``feat[2]`` = ``"stage2"`` for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models.common import PreactBlock, Stage, ZooModel, channel_shuffle, make_taps, stem_and_stages
from mkdlab.models.registry import register_model


class ShuffleV1Bottleneck(PreactBlock):
    """ShuffleNetV1 unit: grouped 1×1, shuffle, depthwise 3×3, grouped 1×1; stride 2 concatenates an avg-pooled
    shortcut, stride 1 adds the identity. (RepDistiller's ``ShuffleNetv1.Bottleneck``.)"""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.groups_in = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.groups_in, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups_in)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(ZooModel):
    """RepDistiller's CIFAR ShuffleNetV1 (stride-1 1×1 stem, no max-pool)."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "pooled")
    stage_names = ("stage1", "stage2", "stage3")
    taps = make_taps("stage3")

    def __init__(
        self,
        out_planes: tuple[int, int, int],
        num_blocks: tuple[int, int, int],
        groups: int,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for planes, blocks in zip(out_planes, num_blocks, strict=True):
            layers = [ShuffleV1Bottleneck(in_planes, planes - in_planes, stride=2, groups=groups)]
            layers += [ShuffleV1Bottleneck(planes, planes, stride=1, groups=groups) for _ in range(1, blocks)]
            stages.append(Stage(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)

    def fc_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats, x = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3))
        return self._head(feats, x)


class ShuffleV2Block(PreactBlock):
    """ShuffleNetV2 basic unit: split in halves, 1×1-dw3×3-1×1 on the second, concatenate, shuffle.
    (RepDistiller's ``ShuffleNetv2.BasicBlock``, split ratio 0.5.)"""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        half = in_channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(branch)], 1), 2)
        return out, torch.cat([x1, branch], 1)


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNetV2 stride-2 unit: two branches (dw3×3/2-1×1 and 1×1-dw3×3/2-1×1), concatenate, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    """RepDistiller's CIFAR ShuffleNetV2 (stride-1 1×1 stem, no max-pool)."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "pooled")
    stage_names = ("stage1", "stage2", "stage3")
    taps = make_taps("stage3", camkd="pre_pool", mmkd="pre_pool")

    def __init__(
        self,
        out_channels: tuple[int, int, int, int],
        num_blocks: tuple[int, int, int],
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        channels = 24
        stages = []
        for width, blocks in zip(out_channels[:3], num_blocks, strict=True):
            layers: list[nn.Module] = [ShuffleV2DownBlock(channels, width)]
            layers += [ShuffleV2Block(width) for _ in range(blocks)]
            stages.append(Stage(*layers))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def fc_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats, x = stem_and_stages(self, x, (self.layer1, self.layer2, self.layer3))
        return self._head(feats, F.relu(self.bn2(self.conv2(x))))


@register_model("ShuffleV1")
def shufflev1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNetV1, groups 3, stages 240/480/960 × 4/8/4 blocks (0.95M parameters for 100 classes)."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)


@register_model("ShuffleV2")
def shufflev2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNetV2 net_size 1: stages 116/232/464 × 3/7/3 blocks, 1024-channel head conv (1.36M)."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
