"""VGG with batch norm of RepDistiller (``models/vgg.py``): ``vgg8``, ``vgg11``, ``vgg13`` (``*_bn`` aliases).

Five conv blocks ``block0..block4`` (conv-BN[-ReLU-conv-BN…], the final ReLU applied by the network), max-pools
``pool0..pool3`` between them and a linear ``classifier`` on the globally pooled 512-d vector. Names match
RepDistiller so its checkpoints load with ``strict=True``. As in the original, ``pool3`` runs only for 64-pixel
inputs; on 32×32 inputs blocks 3 and 4 both see 4×4 maps.

RepDistiller's ``is_feat`` list ``[f0, …, f5]`` is ``feat_names = ("stem", "stage1", "stage2", "stage3",
"stage4", "pooled")``: ``f0`` = block 0 after ReLU, ``f1..f4`` = blocks 1–4 after ReLU (``"stageK_preact"`` before
it, RepDistiller's ``preact=True``), ``f5`` = pooled vector. ``feat[-2]`` = ``"stage4"`` = ``"pre_pool"``
(512×4×4) in every repository; hint ``feat[2]`` = ``"stage2"`` (256×8×8).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models.common import ZooModel, init_repdistiller, make_taps
from mkdlab.models.registry import register_model

CFGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv3×3(bias)-BN-ReLU per width, without the last ReLU (RepDistiller's ``_make_layers(cfg, True)``)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """RepDistiller VGG-BN for CIFAR, built from a five-block ``cfg``."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
    stage_names = ("stage1", "stage2", "stage3", "stage4")
    taps = make_taps("stage4")

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.block0 = make_block(cfg[0], in_channels)
        self.block1 = make_block(cfg[1], cfg[0][-1])
        self.block2 = make_block(cfg[2], cfg[1][-1])
        self.block3 = make_block(cfg[3], cfg[2][-1])
        self.block4 = make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_repdistiller(self, linear="normal")

    def fc_layer(self) -> nn.Linear:
        return self.classifier

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[2]
        feats: dict[str, Tensor] = {}
        x = feats["stem"] = F.relu(self.block0(x))
        for i, (pool, block) in enumerate(
            ((self.pool0, self.block1), (self.pool1, self.block2), (self.pool2, self.block3)), start=1
        ):
            feats[f"stage{i}_preact"] = pre = block(pool(x))
            x = feats[f"stage{i}"] = F.relu(pre)
        if size == 64:
            x = self.pool3(x)
        feats["stage4_preact"] = pre = self.block4(x)
        x = feats["stage4"] = F.relu(pre)
        return self._head(feats, x)


@register_model("vgg8", "vgg8_bn")
def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-8-BN (3.97M parameters for 100 classes)."""
    return VGG(CFGS["vgg8"], num_classes, in_channels)


@register_model("vgg11", "vgg11_bn")
def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-11-BN (9.28M)."""
    return VGG(CFGS["vgg11"], num_classes, in_channels)


@register_model("vgg13", "vgg13_bn")
def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-13-BN (9.46M)."""
    return VGG(CFGS["vgg13"], num_classes, in_channels)
