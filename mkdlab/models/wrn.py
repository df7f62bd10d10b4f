"""Wide ResNets of RepDistiller (``models/wrn.py``): ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2`` (dropRate 0).

Pre-activation blocks (BN-ReLU-conv); module names ``conv1, block1..3`` (each a ``NetworkBlock`` with ``.layer``),
``bn1, fc`` and ``convShortcut`` in the blocks match RepDistiller so its checkpoints load with ``strict=True``.

RepDistiller's ``is_feat`` list ``[f0, f1, f2, f3, f4]`` is ``feat_names = ("stem", "stage1", "stage2",
"stage3", "pooled")``. Because the blocks are pre-activation, the maps differ from the ResNets':

* ``"stem"`` (``f0``) is the bare ``conv1`` output (no BN or ReLU follows the stem in a WRN);
* ``"stageK"`` (``f1..f3``) is the residual sum leaving block K, *before* any BN or ReLU;
* ``"stageK_preact"`` follows RepDistiller's ``preact=True``: the stage output passed through the BN that reads it
  next (``block2.layer[0].bn1``, ``block3.layer[0].bn1``, the final ``bn1``), before its ReLU. These are the
  tensors the forward pass computes anyway, so no BN runs twice and no running statistic is touched twice;
* ``"pre_pool"`` = ``relu(bn1(stage3))``, the map that is pooled (not ``feat[-2]``, which is ``"stage3"``).

``feat[-2]`` = ``"stage3"`` in RepDistiller, CA-MKD and MMKD; hint ``feat[2]`` = ``"stage2"``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models.common import Stage, ZooModel, init_repdistiller, make_taps
from mkdlab.models.registry import register_model


class BasicBlock(nn.Module):
    """``shortcut + conv2(relu(bn2(conv1(relu(bn1(x))))))``; ``convShortcut`` (1×1) reads ``relu(bn1(x))``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut = (
            None
            if in_planes == out_planes
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor, sink: list[Tensor] | None = None) -> Tensor:
        """The block's output; with ``sink``, ``bn1(x)`` (RepDistiller's ``preact`` of the map entering this
        block) is appended to it."""
        normed = self.bn1(x)
        if sink is not None:
            sink.append(normed)
        act = F.relu(normed)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """``nb_layers`` WRN blocks in ``self.layer``; the first one carries the stride and the width change.

    ``block(x, sink=lst)`` appends ``layer[0].bn1(x)`` to ``lst`` (the stage :class:`~mkdlab.models.common.Stage`
    taps its first block); every block is called, so forward hooks fire.
    """

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = Stage(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ),
            tap=0,
        )

    def forward(self, x: Tensor, sink: list[Tensor] | None = None) -> Tensor:
        return self.layer(x, sink=sink)


class WideResNet(ZooModel):
    """RepDistiller WRN-``depth``-``widen_factor`` with ``depth = 6n + 4``."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "pooled")
    stage_names = ("stage1", "stage2", "stage3")
    taps = make_taps("stage3")

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_repdistiller(self, linear="zero_bias")

    def fc_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        feats["stem"] = f0 = self.conv1(x)
        feats["stage1"] = f1 = self.block1(f0)
        sink: list[Tensor] = []
        f2 = self.block2(f1, sink=sink)
        feats["stage1_preact"], feats["stage2"] = sink[0], f2
        f3 = self.block3(f2, sink=sink)
        feats["stage2_preact"], feats["stage3"] = sink[1], f3
        feats["stage3_preact"] = normed = self.bn1(f3)
        return self._head(feats, F.relu(normed))


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (0.70M parameters for 100 classes)."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (0.57M)."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (2.26M)."""
    return WideResNet(40, 2, num_classes, in_channels)
