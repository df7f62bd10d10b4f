r"""DTSKD's top-down auxiliary branches on any zoo backbone (Li et al., Pattern Recognition 2024; docs/methods.md §5.5).

The official ``models/resnet_dtskd.py`` adds three light branches to the CIFAR ResNet-18, built top-down, FPN-like,
from the backbone's own features. Everything after the backbone works on 1×1 maps:

.. math::
    t_N = g_N = \mathrm{GAP}(s_N),\qquad
    u_j = U_j(t_{j+1}),\qquad
    t_j = \Phi_j\big([\,u_j + L_j(s_j),\ u_j\,]\big),\qquad
    z_j = \mathrm{fc}_j(t_j),\qquad j = N-1, \dots, 1

with :math:`s_j` the output of stage :math:`j`, :math:`U_j` = Conv1×1(d→d, no bias)+BN+ReLU (top-down),
:math:`L_j` = AdaptiveAvgPool(1)+Conv1×1(:math:`c_j`→d, no bias)+BN+ReLU (lateral), :math:`\Phi_j` =
Conv1×1(2d→d, no bias)+BN+ReLU (fusion) and :math:`\mathrm{fc}_j` = Linear(d→C). Branch :math:`j` is fed by stage
:math:`j`; the deepest branch (:math:`N-1`) starts from the pooled vector. Branch gradients flow into the backbone.

mkdlab generalises the ResNet-18 design to every zoo model: the laterals tap ``stage_names[:-1]`` (N stages give
N−1 branches: 3 for resnet18 and the VGGs, 2 for the CIFAR ResNets/WRNs/ShuffleNets) and the width d is the
size of the backbone's ``"pooled"`` vector (512 for resnet18; it equals the last stage's channels except for
MobileNetV2, 1280, and ShuffleV2, 1024). For resnet18 with 100 classes the branches hold 2,751,788 parameters
(backbone 11,220,132, total 13,971,920). Initialisation: PyTorch's defaults, like the kuangliu ResNet-18 backbone
[ASSUMPTION: the spec does not state the branches' initialisation].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mkdlab.models.common import ZooModel, projection
from mkdlab.models.summary import probe_shapes


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv1×1 (no bias) + BN + ReLU: the top-down, lateral and fusion blocks of DTSKD."""
    return nn.Sequential(projection(in_channels, out_channels, stride=1), nn.ReLU())


def lateral(in_channels: int, out_channels: int) -> nn.Sequential:
    """:math:`L_j`: global average pool, then :func:`conv_bn_relu` on the 1×1 map."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, out_channels))


class TopDownBranches(nn.Module):
    r"""The N−1 auxiliary branches of DTSKD on the stages of a backbone (module docstring for the equations).

    ``forward(maps)`` takes the backbone's ``forward_features`` dict and returns the branch logits
    :math:`[z_1, \dots, z_{N-1}]` (branch 1 = the one fed by ``stage_names[0]``). ``laterals[j]``,
    ``top_downs[j]``, ``fusions[j]`` and ``heads[j]`` belong to branch :math:`j+1`.
    """

    def __init__(self, stage_names: Sequence[str], stage_channels: Sequence[int], width: int,
                 num_classes: int) -> None:
        super().__init__()
        if len(stage_names) != len(stage_channels) or not stage_names:
            raise ValueError(f"give one channel count per tapped stage, got {list(stage_names)} and "
                             f"{list(stage_channels)}")
        self.stage_names = tuple(stage_names)
        self.laterals = nn.ModuleList(lateral(c, width) for c in stage_channels)
        self.top_downs = nn.ModuleList(conv_bn_relu(width, width) for _ in stage_channels)
        self.fusions = nn.ModuleList(conv_bn_relu(2 * width, width) for _ in stage_channels)
        self.heads = nn.ModuleList(nn.Linear(width, num_classes) for _ in stage_channels)

    @classmethod
    def for_backbone(cls, backbone: ZooModel, image_size: int = 32) -> TopDownBranches:
        """Branches sized for a zoo model: laterals on every stage but the last, width = its pooled size, as many
        classes as its classifier."""
        shapes = probe_shapes(backbone, image_size)
        names = backbone.stage_names[:-1]
        if not names:
            raise ValueError(f"{type(backbone).__name__} has a single stage: DTSKD needs two or more")
        return cls(names, [shapes[name][1] for name in names], shapes["pooled"][1],
                   backbone.fc_layer().out_features)

    def forward(self, maps: dict[str, Tensor]) -> list[Tensor]:
        t = maps["pooled"][:, :, None, None]
        logits: list[Tensor] = [t] * len(self.stage_names)
        for j in reversed(range(len(self.stage_names))):
            u = self.top_downs[j](t)
            t = self.fusions[j](torch.cat([u + self.laterals[j](maps[self.stage_names[j]]), u], dim=1))
            logits[j] = self.heads[j](t.flatten(1))
        return logits


def multi_branch_logits(backbone: ZooModel, branches: TopDownBranches, x: Tensor) -> list[Tensor]:
    r"""One pass through backbone and branches: :math:`[z, z_1, \dots, z_{N-1}]` (backbone first)."""
    maps = backbone.forward_features(x)
    return [maps["logits"], *branches(maps)]


class MultiBranchNet(nn.Module):
    r"""A backbone and its :class:`TopDownBranches`; ``forward`` returns :math:`[z, z_1, \dots, z_{N-1}]`.

    Only the backbone is deployed: the branches are training-time teachers/students of the backbone.
    """

    def __init__(self, backbone: ZooModel, branches: TopDownBranches | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.branches = branches if branches is not None else TopDownBranches.for_backbone(backbone)

    @property
    def num_outputs(self) -> int:
        """Backbone plus branches."""
        return 1 + len(self.branches.heads)

    def forward(self, x: Tensor) -> list[Tensor]:
        return multi_branch_logits(self.backbone, self.branches, x)

    def output(self, index: int) -> SelectOutput:
        """A module returning only output ``index`` (0 = backbone, j = branch j), e.g. to evaluate one head."""
        if not 0 <= index < self.num_outputs:
            raise IndexError(f"output {index} does not exist: 0 (backbone) to {self.num_outputs - 1}")
        return SelectOutput(self, index)


class SelectOutput(nn.Module):
    """The logits of one output of a :class:`MultiBranchNet` (a view: the modules are shared, not copied)."""

    def __init__(self, net: MultiBranchNet, index: int) -> None:
        super().__init__()
        self.net = net
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[self.index]
