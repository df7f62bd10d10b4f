"""Pieces shared by every family of the CIFAR zoo: the :class:`ZooModel` contract and small helpers.

Every model maps a B×C×32×32 batch to logits with ``forward`` and to named maps with ``forward_features``:
``"stem"``, ``"stage1"`` … ``"stageN"`` (with ``"stageK_preact"``), ``"pre_pool"``, ``"pooled"`` and
``"logits"``. Three class attributes translate the names into the papers' positional lists:

* ``feat_names``: RepDistiller's ``is_feat`` list, ``feat[i] == forward_features(x)[feat_names[i]]``;
* ``stage_names``: ``feat[1:-1]``, the maps attention transfer (AT) uses;
* ``taps``: ``"hint"`` (``feat[2]``, FitNet / DE-MKD), ``"penultimate"`` (RepDistiller's ``feat[-2]``),
  ``"penultimate_camkd"`` (CA-MKD's ``feat[-2]``), ``"penultimate_mmkd"`` (MMKD's ``feat[-2]``) and
  ``"last_map"`` (the map that is globally pooled, used for CAMs).

The parameter-free pooling modules of the originals (``AvgPool2d(8)``, ``F.avg_pool2d(out, 4)``, ``pool4``, …)
are replaced by one global average pool: on 32×32 inputs the result is identical and state dicts are unaffected.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn


class ZooModel(nn.Module):
    """Base class of the zoo: ``forward`` returns logits; ``forward_features`` returns the named maps.

    ``self.last_map`` is a parameter-free identity applied to the ``"pre_pool"`` map, so a hook (Grad-CAM's
    target layer) sees that map whatever the family.
    """

    feat_names: ClassVar[tuple[str, ...]]
    stage_names: ClassVar[tuple[str, ...]]
    taps: ClassVar[dict[str, str]]

    def __init__(self) -> None:
        super().__init__()
        self.last_map = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B×num_classes)."""
        return self.forward_features(x)["logits"]

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Named maps in forward order (see the module docstring of each family)."""
        raise NotImplementedError

    def fc_layer(self) -> nn.Linear:
        """The final linear layer (CAMs apply it as a 1×1 convolution)."""
        raise NotImplementedError

    @staticmethod
    def global_pool(feature_map: Tensor) -> Tensor:
        """Global average pool and flatten: B×C×H×W → B×C."""
        return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)

    def classifier_head(self, feature_map: Tensor) -> Tensor:
        """Logits from a map shaped like ``"pre_pool"``: this model's global pool, flatten and FC."""
        return self.fc_layer()(self.global_pool(feature_map))

    def _head(self, feats: dict[str, Tensor], pre_pool: Tensor) -> dict[str, Tensor]:
        """Add ``"pre_pool"``, ``"pooled"`` and ``"logits"`` to ``feats`` and return it."""
        feats["pre_pool"] = pre_pool = self.last_map(pre_pool)
        feats["pooled"] = pooled = self.global_pool(pre_pool)
        feats["logits"] = self.fc_layer()(pooled)
        return feats


def stem_and_stages(model: nn.Module, x: Tensor, stages: tuple[Stage, ...]) -> tuple[dict[str, Tensor], Tensor]:
    """Run ``relu(bn1(conv1(x)))`` then each :class:`Stage` of :class:`PreactBlock` s, naming the maps.

    Every stage and block is *called* (its forward hooks fire). Returns the maps ``"stem"``, ``"stageK"`` and
    ``"stageK_preact"`` and the last stage's output.
    """
    feats: dict[str, Tensor] = {}
    x = feats["stem"] = F.relu(model.bn1(model.conv1(x)))
    for i, stage in enumerate(stages, start=1):
        sink: list[Tensor] = []
        x = stage(x, sink=sink)
        feats[f"stage{i}_preact"], feats[f"stage{i}"] = sink[0], x
    return feats, x


def make_taps(penultimate: str, *, camkd: str | None = None, mmkd: str | None = None) -> dict[str, str]:
    """The ``taps`` of a family whose RepDistiller ``feat[-2]`` is ``penultimate`` (CA-MKD/MMKD may differ)."""
    return {
        "hint": "stage2",
        "penultimate": penultimate,
        "penultimate_camkd": camkd or penultimate,
        "penultimate_mmkd": mmkd or penultimate,
        "last_map": "pre_pool",
    }


class PreactBlock(nn.Module):
    """A block whose output is ``relu(preact)``; ``forward_preact`` returns both (RepDistiller's ``is_last``).

    ``block(x, sink=lst)`` returns the output and appends the pre-activation to ``lst``, so a stage can hand the
    pre-activation of its last block to ``forward_features`` while the block is still *called* (forward hooks,
    e.g. pytorch-grad-cam's ``target_layers=[model.layer3[-1]]``, see the output tensor).
    """

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(output, pre-activation)`` of the block."""
        raise NotImplementedError

    def forward(self, x: Tensor, sink: list[Tensor] | None = None) -> Tensor:
        out, preact = self.forward_preact(x)
        if sink is not None:
            sink.append(preact)
        return out


class Stage(nn.Sequential):
    """A stage of blocks (an :class:`~torch.nn.Sequential`, so state-dict keys stay ``layerK.i.*``).

    ``stage(x)`` runs the blocks in order; ``stage(x, sink=lst)`` also passes ``sink`` to the block at index
    ``tap`` (the last one by default, which appends its pre-activation; WRN uses the first one, which appends its
    input BN). Every block is called through ``__call__``, so forward hooks on the stage and on each block fire.
    """

    def __init__(self, *blocks: nn.Module, tap: int = -1) -> None:
        super().__init__(*blocks)
        self.tap = tap

    def forward(self, x: Tensor, sink: list[Tensor] | None = None) -> Tensor:
        tap = self.tap % len(self)
        for i, block in enumerate(self):
            x = block(x, sink=sink) if sink is not None and i == tap else block(x)
        return x


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1×1 conv (no bias) + BN shortcut, keys ``.0.weight`` and ``.1.*`` (RepDistiller ``downsample``)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: [N, g·c, H, W] → [N, c·g, H, W] (works on channels_last tensors)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_repdistiller(model: nn.Module, linear: Literal["default", "zero_bias", "normal"] = "default") -> None:
    """RepDistiller's initialisation.

    Convs: He normal with fan-out (RepDistiller's ``normal_(0, sqrt(2 / (k·k·out)))`` and
    ``kaiming_normal_(mode="fan_out")`` are the same law), bias 0; BatchNorm: weight 1, bias 0; Linear: PyTorch's
    default (``resnet.py``), bias 0 (``wrn.py``) or N(0, 0.01) with bias 0 (``vgg.py``, ``mobilenetv2.py``).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
