"""The CIFAR model zoo: RepDistiller / CA-MKD / MMKD architectures and DTSKD's ResNet-18.

>>> from mkdlab.models import create
>>> model = create("resnet8x4", num_classes=100)
>>> feats = model.forward_features(images)           # {"stem", "stage1", …, "pre_pool", "pooled", "logits"}
>>> hint = feats[model.taps["hint"]]                  # RepDistiller's feat[2]

Every model returns logits from ``forward`` and named maps from ``forward_features``; ``feat_names``,
``stage_names`` and ``taps`` translate names into the papers' ``feat[i]`` (see :mod:`mkdlab.models.common` and
each family's module docstring). Module names equal RepDistiller's, so its checkpoints load with
:func:`load_external_checkpoint`.
"""

# isort: off
# importing the family modules registers their models; this order is the zoo order of available_models()
from mkdlab.models import resnet, wrn, vgg, mobilenetv2, shufflenet, resnet18  # noqa: F401

# isort: on
from mkdlab.models.common import ZooModel
from mkdlab.models.external import load_external_checkpoint
from mkdlab.models.mobilenetv2 import MobileNetV2
from mkdlab.models.registry import available_models, canonical_name, create, register_model
from mkdlab.models.resnet import ResNet
from mkdlab.models.resnet18 import ResNet18
from mkdlab.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from mkdlab.models.summary import count_flops, count_parameters, probe_shapes, zoo_table
from mkdlab.models.vgg import VGG
from mkdlab.models.wrn import WideResNet

__all__ = [
    "VGG",
    "MobileNetV2",
    "ResNet",
    "ResNet18",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WideResNet",
    "ZooModel",
    "available_models",
    "canonical_name",
    "count_flops",
    "count_parameters",
    "create",
    "load_external_checkpoint",
    "probe_shapes",
    "register_model",
    "zoo_table",
]
