"""CAM and Grad-CAM tooling (mkdlab.cam): the FC-as-conv op, CAM = Grad-CAM for GAP→FC nets, the wrapper's
hygiene (modes, flags and gradients left as found), tuple-returning models, Distillers and the grid plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mkdlab.cam import (  # noqa: E402
    LogitsOf,
    cam_pictures,
    class_activation_maps,
    default_target_layer,
    grad_cam,
    maps_of_classes,
    normalize_maps,
    plot_cam_grid,
    preserved_state,
)
from mkdlab.methods import get_method  # noqa: E402
from mkdlab.models import available_models, create  # noqa: E402

#: one cheap member of every zoo family (resnet, wide resnet, wrn, vgg, mobilenetv2, shufflenets, resnet18).
FAMILIES = ["resnet8", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "ShuffleV1", "ShuffleV2", "resnet18"]
C = 10


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def model(name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return create(name, num_classes=C, in_channels=1).to(dtype).eval()


def images(n: int = 3, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_families_cover_the_zoo():
    assert set(FAMILIES) <= set(available_models())


# -- the tensor op ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_cam_spatial_mean_plus_bias_is_the_logits(name):
    net = model(name)
    with torch.no_grad():
        feats = net.forward_features(images())
    last = feats[net.taps["last_map"]]
    fc = net.fc_layer()
    cams = class_activation_maps(net, last)
    torch.testing.assert_close(cams, torch.einsum("cd,bdhw->bchw", fc.weight, last), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cams.mean((2, 3)) + fc.bias, feats["logits"], rtol=1e-10, atol=1e-10)
    with_bias = class_activation_maps(net, last, bias=True)
    torch.testing.assert_close(with_bias.mean((2, 3)), feats["logits"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(with_bias - cams, fc.bias[None, :, None, None].expand_as(cams))


def test_cam_is_differentiable_in_the_map_and_the_fc():
    net = model("resnet8")
    last = torch.randn(2, 64, 8, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, C, 8, 8, dtype=torch.float64)
    (class_activation_maps(net, last) * weights).sum().backward()
    fc = net.fc_layer()
    torch.testing.assert_close(last.grad, torch.einsum("cd,bchw->bdhw", fc.weight, weights))
    torch.testing.assert_close(fc.weight.grad, torch.einsum("bchw,bdhw->cd", weights, last.detach()))
    assert fc.bias.grad is None


def test_cam_refuses_a_map_of_the_wrong_width():
    with pytest.raises(ValueError, match="takes 64 channels"):
        class_activation_maps(model("resnet8"), torch.zeros(1, 32, 8, 8, dtype=torch.float64))


def test_maps_of_classes_picks_one_channel_per_sample():
    maps = torch.arange(2 * 3 * 4, dtype=torch.float64).view(2, 3, 2, 2)
    picked = maps_of_classes(maps, torch.tensor([2, 0]))
    torch.testing.assert_close(picked, torch.stack([maps[0, 2], maps[1, 0]]))


def test_normalize_maps_relu_minmax_then_resize():
    maps = torch.tensor([[[-1.0, 1.0], [2.0, 3.0]]], dtype=torch.float64)
    out = normalize_maps(maps, (2, 2))  # no resize: ReLU then (x - min) / (1e-7 + max - min), twice
    once = torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]]) / (1 + 1e-7 / 3)
    torch.testing.assert_close(out, once / (1e-7 + once.max()))
    assert normalize_maps(maps, (8, 8)).shape == (1, 8, 8)


# -- CAM = Grad-CAM --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_grad_cam_at_the_last_map_equals_the_cam_after_normalisation(name):
    net, x = model(name), images()
    assert default_target_layer(net) is net.last_map
    classes = torch.tensor([1, 4, 7])  # explicit classes (not the predicted ones: a random net predicts one class)
    with torch.no_grad():
        feats = net.forward_features(x)
    cams = class_activation_maps(net, feats[net.taps["last_map"]])
    height, width = cams.shape[-2:]  # Grad-CAM's map is the CAM / (H·W): the gradient of the GAP
    expected = normalize_maps(maps_of_classes(cams, classes) / (height * width), (32, 32)).numpy()
    got = grad_cam(net, x, classes)
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(cam_pictures(net, x, classes), expected, atol=1e-6)


def test_without_classes_both_explain_the_predicted_class():
    net, x = model("resnet8"), images()
    with torch.no_grad():
        predicted = net(x).argmax(1)
    np.testing.assert_allclose(grad_cam(net, x), cam_pictures(net, x, predicted), atol=1e-6)
    np.testing.assert_allclose(cam_pictures(net, x), cam_pictures(net, x, predicted))


def test_grad_cam_at_another_layer_and_a_clear_error_for_a_layer_that_never_runs():
    net, x = model("resnet8"), images()
    inner = grad_cam(net, x, target_layer=net.layer2[-1].bn2)
    assert inner.shape == (3, 32, 32) and np.abs(inner - grad_cam(net, x)).max() > 0.05
    stage = grad_cam(net, x, target_layer=net.layer2)  # a stage container is called by the forward (issue #17)
    assert stage.shape == (3, 32, 32) and np.abs(stage - inner).max() > 0.05
    with pytest.raises(ValueError, match="never called"):
        grad_cam(net, x, target_layer=nn.Conv2d(1, 1, 1))  # not part of the model


def test_grad_cam_differs_between_classes():
    net, x = model("resnet8"), images()
    assert np.abs(grad_cam(net, x, torch.tensor([0, 0, 0])) - grad_cam(net, x, torch.tensor([1, 1, 1]))).max() > 0.05


# -- leaving the model as found ---------------------------------------------------------------------------------
def test_grad_cam_leaves_modes_flags_and_grads_as_found():
    net = model("resnet8", dtype=torch.float32).train()
    net.layer1.eval()
    net.fc.requires_grad_(False)
    marker = torch.full_like(net.conv1.weight, 3.0)
    net.conv1.weight.grad = marker
    modes = {name: m.training for name, m in net.named_modules()}
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():  # callers may be inside no_grad: Grad-CAM still gets its gradient
        maps = grad_cam(net, images(dtype=torch.float32))
    assert maps.shape == (3, 32, 32) and np.isfinite(maps).all()
    with torch.inference_mode():
        np.testing.assert_array_equal(grad_cam(net, images(dtype=torch.float32)), maps)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert {name: p.requires_grad for name, p in net.named_parameters()} == flags
    assert net.conv1.weight.grad is marker and torch.equal(marker, torch.full_like(marker, 3.0))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "conv1.weight")
    for key, value in net.state_dict().items():  # eval mode inside: BN running statistics untouched
        assert torch.equal(value, state[key]), key


def test_preserved_state_restores_after_an_exception():
    net = model("resnet8", dtype=torch.float32).train()
    with pytest.raises(RuntimeError), preserved_state(net):
        net.eval().requires_grad_(False)
        raise RuntimeError
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())


class TupleNet(nn.Module):
    """A model returning (main logits, auxiliary logits), like a multi-branch self-distillation network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.aux = nn.Linear(C, C).to(torch.float64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, self.aux(logits)


def test_grad_cam_of_a_tuple_returning_model_with_a_selector():
    net, x = model("resnet8"), images()
    wrapped = TupleNet(net).train()
    classes = torch.tensor([2, 3, 5])
    plain = grad_cam(net, x, classes)
    np.testing.assert_allclose(grad_cam(wrapped, x, classes, select=0), plain, atol=1e-6)
    np.testing.assert_allclose(grad_cam(wrapped, x, classes, select=lambda out: out[0]), plain, atol=1e-6)
    assert wrapped.training and net.training  # the mode the caller had set
    assert default_target_layer(LogitsOf(wrapped, 0)) is net.last_map
    with pytest.raises(ValueError, match="target_layer"):
        default_target_layer(nn.Linear(2, 2))


def test_grad_cam_of_a_distiller_explains_its_student_and_leaves_teachers_frozen():
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=C, in_channels=1) for _ in range(2)]
    method = get_method("aver_kd")(create("resnet8", num_classes=C, in_channels=1), teachers).train()
    assert default_target_layer(method) is method.student.last_map
    x = images(dtype=torch.float32)
    np.testing.assert_allclose(grad_cam(method, x), grad_cam(method.student, x), atol=1e-6)
    assert method.training and method.student.training
    assert all(not t.training and not any(p.requires_grad or p.grad is not None for p in t.parameters())
               for t in teachers)
    assert all(p.requires_grad and p.grad is None for p in method.student.parameters())


# -- the grid plot ---------------------------------------------------------------------------------------------
def test_plot_cam_grid_draws_one_row_per_image_and_one_column_per_model():
    x = images(dtype=torch.float32)
    maps = {"teacher": np.random.default_rng(0).random((3, 32, 32)), "student": torch.rand(3, 32, 32)}
    fig = plot_cam_grid(x, maps, labels=[0, 1, 2], class_names=list("abcdefghij"), mean=(0.5,), std=(0.25,))
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["image", "teacher", "student"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b", "c"]
    assert len(axes[1, 0].images) == 1 and len(axes[1, 1].images) == 2
    np.testing.assert_allclose(axes[1, 1].images[1].get_array(), maps["teacher"][1])
    np.testing.assert_allclose(axes[2, 0].images[0].get_array(), (x[2, 0] * 0.25 + 0.5).clamp(0, 1).numpy())
    with pytest.raises(ValueError, match="N×H×W"):
        plot_cam_grid(x, {"bad": np.zeros((2, 32, 32))})
