"""pytorch-grad-cam at any stage or block of every zoo family, as its README calls it (issue #17).

``target_layers=[model.layer3[-1]]`` needs the stage containers and the last block of a stage to be *called* by the
forward (their forward hooks fire). For each family, at an intermediate stage and at the last stage/block:

* the hooked output is the named map of ``forward_features`` (so the layer is the stage the methods tap);
* GradCAM, HiResCAM and LayerCAM equal the CAM computed here from the hooked activation :math:`A` and the gradient
  :math:`G = \\partial y_c / \\partial A` (float64, torch only), with the package's normalisation
  (ReLU, min-max with its 1e-7, bilinear resize to the input, min-max again):

  - Grad-CAM (Selvaraju et al. 2017): :math:`\\sum_k \\mathrm{mean}_{ij}(G_k)\\,A_k`;
  - HiResCAM (Draelos & Carin 2020): :math:`\\sum_k G_k \\odot A_k`;
  - LayerCAM (Jiang et al. 2021): :math:`\\sum_k \\mathrm{relu}(G_k) \\odot A_k`;

* GradCAM++, ScoreCAM and EigenCAM run and give finite, non-constant maps of the input's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from mkdlab.models import ZooModel, available_models, create

Pick = Callable[[nn.Module], nn.Module]

#: family → (smallest model, [(name, layer, the forward_features map the layer outputs)] at two depths).
FAMILIES: dict[str, tuple[str, list[tuple[str, Pick, str]]]] = {
    "ResNet": ("resnet8", [("layer2", lambda m: m.layer2, "stage2"),
                           ("layer3[-1]", lambda m: m.layer3[-1], "stage3")]),
    "WideResNet": ("wrn_16_2", [("block2", lambda m: m.block2, "stage2"),
                                ("block3.layer[-1]", lambda m: m.block3.layer[-1], "stage3")]),
    "VGG": ("vgg8", [("block2", lambda m: m.block2, "stage2_preact"),
                     ("block4", lambda m: m.block4, "stage4_preact")]),
    "MobileNetV2": ("mobilenetv2", [("blocks[2]", lambda m: m.blocks[2], "stage2"),
                                    ("blocks[6][-1]", lambda m: m.blocks[6][-1], "stage4")]),
    "ShuffleNetV1": ("ShuffleV1", [("layer2", lambda m: m.layer2, "stage2"),
                                   ("layer3[-1]", lambda m: m.layer3[-1], "stage3")]),
    "ShuffleNetV2": ("ShuffleV2", [("layer2", lambda m: m.layer2, "stage2"),
                                   ("layer3[-1]", lambda m: m.layer3[-1], "stage3")]),
    "ResNet18": ("resnet18", [("layer2", lambda m: m.layer2, "stage2"),
                              ("layer4[-1]", lambda m: m.layer4[-1], "stage4")]),
}
CASES = [(family, depth) for family in FAMILIES for depth in (0, 1)]
IDS = [f"{FAMILIES[f][0]}-{FAMILIES[f][1][d][0]}" for f, d in CASES]
CLASSES = [3, 7, 1, 5]

#: the channel weighting of each method, from the hooked activation A and gradient G (B×K×H×W).
HAND: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    GradCAM: lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1),
    HiResCAM: lambda a, g: (g * a).sum(1),
    LayerCAM: lambda a, g: (g.clamp_min(0) * a).sum(1),
}


def _model(family: str) -> ZooModel:
    torch.manual_seed(0)
    return create(FAMILIES[family][0], num_classes=10).eval()


def _images(n: int = 2) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _layer(model: nn.Module, family: str, depth: int) -> tuple[nn.Module, str]:
    _, pick, feature = FAMILIES[family][1][depth]
    return pick(model), feature


def _hooked(model: ZooModel, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The layer's output A (from a forward hook on ``layer``), dA of the sum of the ``CLASSES`` scores, and the
    ``forward_features`` maps of the same pass."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        feats = model.forward_features(x)
    finally:
        handle.remove()
    assert len(seen) == 1, f"{type(layer).__name__} ran {len(seen)} times in one forward"
    score = feats["logits"][torch.arange(len(x)), torch.tensor(CLASSES[: len(x)])].sum()
    (grad,) = torch.autograd.grad(score, seen[0])
    return seen[0].detach(), grad, {k: v.detach() for k, v in feats.items()}


def _minmax(cam: Tensor) -> Tensor:
    low = cam.flatten(1).min(1).values[:, None, None]
    cam = cam - low
    return cam / (1e-7 + cam.flatten(1).max(1).values[:, None, None])


def _normalise(cam: Tensor, size: int) -> Tensor:
    """pytorch-grad-cam's post-processing of one layer's CAM: ReLU, min-max, bilinear resize, min-max."""
    cam = _minmax(cam.clamp_min(0))
    cam = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return _minmax(cam.clamp_min(0))


def _run(method: type, model: nn.Module, layer: nn.Module, x: Tensor, **options: int) -> np.ndarray:
    with method(model, [layer]) as cam:
        for key, value in options.items():
            setattr(cam, key, value)
        return cam(x, [ClassifierOutputTarget(c) for c in CLASSES[: len(x)]])


def test_the_families_cover_the_zoo():
    with torch.device("meta"):  # no weights are initialised: only the classes matter
        families = {type(create(name, num_classes=10)).__name__ for name in available_models()}
    assert families == set(FAMILIES)


@pytest.mark.parametrize(("family", "depth"), CASES, ids=IDS)
def test_the_layer_outputs_its_named_map_and_gradient_cams_equal_the_hand_computed_cam(family, depth):
    model, x = _model(family), _images(len(CLASSES))
    layer, feature = _layer(model, family, depth)
    activation, grad, feats = _hooked(model, layer, x)
    torch.testing.assert_close(activation, feats[feature], rtol=0, atol=0)
    for method, weighting in HAND.items():
        expected = _normalise(weighting(activation.double(), grad.double()), x.shape[-1])
        assert float(expected.max()) > 0.5, f"{method.__name__}: every CAM is zero, choose other classes"
        got = _run(method, model, layer, x)
        assert got.shape == (len(x), 32, 32)
        # the package works in float32, this reference in float64, then both divide by the map's range: 1e-4
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4, err_msg=method.__name__)


@pytest.mark.parametrize(("family", "depth"), CASES, ids=IDS)
def test_gradcam_plus_plus_and_eigencam_give_a_finite_non_constant_map(family, depth):
    model, x = _model(family), _images(len(CLASSES))
    layer, _ = _layer(model, family, depth)
    for method in (GradCAMPlusPlus, EigenCAM):
        _assert_sane(_run(method, model, layer, x), x, method.__name__)


#: ScoreCAM runs one forward pass per channel of the layer: it gets one 16×16 image (the map stays ≥ 2×2), except
#: MobileNetV2, whose last block is 1×1 at 16 px; the layers with more than 256 channels are marked slow.
@pytest.mark.parametrize(
    ("family", "depth"),
    [pytest.param(f, d, id=i, marks=[pytest.mark.slow] if f in ("ShuffleNetV1", "ResNet18") else [])
     for (f, d), i in zip(CASES, IDS, strict=True)],
)
def test_scorecam_gives_a_finite_non_constant_map(family, depth):
    model = _model(family)
    size = 32 if family == "MobileNetV2" else 16
    x = _images(1)[..., :size, :size]
    layer, _ = _layer(model, family, depth)
    _assert_sane(_run(ScoreCAM, model, layer, x, batch_size=128), x, "ScoreCAM")


def _assert_sane(maps: np.ndarray, x: Tensor, name: str) -> None:
    """Finite maps of the input's size, at least one not constant (a map may be all zero; a constant one is exactly
    zero after the package's min-max, and stays so through the resize)."""
    assert maps.shape == (len(x), *x.shape[-2:]), name
    assert np.isfinite(maps).all(), name
    flat = maps.reshape(len(x), -1)
    assert (flat.max(1) - flat.min(1) > 0).any(), f"{name}: every map is constant"
