"""MobileNetV2 of RepDistiller (``models/mobilenetv2.py``, ``mobile_half``: expansion T=6, width 0.5).

Stride-2 conv-BN-ReLU stem ``conv1``, seven groups of inverted residuals ``blocks[0..6]`` (each with a ``conv``
sequential: pw-BN-ReLU, dw-BN-ReLU, pw-linear-BN), the 1×1 conv-BN-ReLU ``conv2`` to 1280 channels and
``classifier`` (a sequential holding one linear layer, keys ``classifier.0.*``). Names match RepDistiller so its
checkpoints load with ``strict=True``. Registered as ``mobilenetv2`` with the alias ``mobile_half``.

RepDistiller's ``is_feat`` list ``[f0, …, f5]`` is ``feat_names = ("stem", "stage1", "stage2", "stage3",
"stage4", "pooled")``: ``f0`` = stem (16×16×16), ``f1`` = after ``blocks[0..1]`` (12×16×16), ``f2`` = after
``blocks[2]`` (16×8×8), ``f3`` = after ``blocks[3..4]`` (48×4×4), ``f4`` = after ``blocks[5..6]`` (160×2×2),
``f5`` = pooled 1280-d vector. ``"pre_pool"`` is the ``conv2`` output (1280×2×2).

Repository difference: ``feat[-2]`` is ``"stage4"`` (160×2×2) in RepDistiller and CA-MKD (``taps["penultimate"]``,
``taps["penultimate_camkd"]``) but ``"pre_pool"`` (1280×2×2) in MMKD (``taps["penultimate_mmkd"]``).
An inverted residual ends in a linear bottleneck (no ReLU), so the stage outputs are already pre-activations:
``"stageK_preact"`` is the same tensor as ``"stageK"`` (RepDistiller ignores ``preact`` here too).
"""

from __future__ import annotations

from torch import Tensor, nn

from mkdlab.models.common import ZooModel, init_repdistiller, make_taps
from mkdlab.models.registry import register_model

#: (channels c, repeats n, stride s) of the seven groups before width scaling, as in RepDistiller; the first group
#: has expansion 1, the others ``T``.
SETTING = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
#: which of ``blocks[0..6]`` end each stage (``f1..f4``).
STAGE_ENDS = (1, 2, 4, 6)


def conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    """conv (no bias)-BN-ReLU, RepDistiller's ``conv_bn`` (3×3) and ``conv_1x1_bn`` (1×1)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """pw expand-BN-ReLU, dw 3×3-BN-ReLU, pw project-BN; identity shortcut when stride 1 and ``inp == oup``."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    """RepDistiller's CIFAR MobileNetV2 with expansion ``T`` and ``width_mult``."""

    feat_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
    stage_names = ("stage1", "stage2", "stage3", "stage4")
    taps = make_taps("stage4", mmkd="pre_pool")

    def __init__(self, T: int, width_mult: float, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if width_mult > 1.0:
            raise ValueError("RepDistiller's make_divisible branch for width_mult > 1 is not implemented")
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for group, (c, n, s) in enumerate(SETTING):
            out = int(c * width_mult)
            expand = 1 if group == 0 else T
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, expand))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = conv_bn_relu(channels, 1280, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
        init_repdistiller(self, linear="normal")

    def fc_layer(self) -> nn.Linear:
        return self.classifier[0]

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        x = feats["stem"] = self.conv1(x)
        start = 0
        for i, end in enumerate(STAGE_ENDS, start=1):
            for block in self.blocks[start : end + 1]:
                x = block(x)
            feats[f"stage{i}"] = feats[f"stage{i}_preact"] = x
            start = end + 1
        return self._head(feats, self.conv2(x))


@register_model("mobilenetv2", "mobile_half")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    """RepDistiller's ``mobile_half``: T=6, width 0.5 (0.81M parameters for 100 classes)."""
    return MobileNetV2(6, 0.5, num_classes, in_channels)
