"""Tests of the CIFAR model zoo (:mod:`mkdlab.models`).

Parameter counts and map shapes are the numbers of docs/methods.md §3 (RepDistiller / CA-MKD definitions). The
external-checkpoint tests build RepDistiller state dicts key by key from the architecture description, without
using mkdlab's classes, and compare mkdlab's forward with a functional forward written here.
"""

from __future__ import annotations

import os
import pickle
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.models import (
    MobileNetV2,
    ZooModel,
    available_models,
    count_flops,
    count_parameters,
    create,
    load_external_checkpoint,
    register_model,
    zoo_table,
)

EXPECTED_PARAMS = {
    "resnet8": 83_892,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet20x4": 4_333_700,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "resnet18": 11_220_132,
}
MODELS = list(EXPECTED_PARAMS)

# docs/methods.md §3: the ``is_feat`` list (C×H×W, last entry the pooled vector) and the named taps.
_RES = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
_RES_X4 = [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)]
_WRN_K2 = [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)]
_VGG = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)]
FEAT_SHAPES: dict[str, list[tuple[int, ...]]] = {
    **dict.fromkeys(["resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "wrn_40_1"], _RES),
    **dict.fromkeys(["resnet8x4", "resnet20x4", "resnet32x4"], _RES_X4),
    **dict.fromkeys(["wrn_16_2", "wrn_40_2"], _WRN_K2),
    **dict.fromkeys(["vgg8", "vgg11", "vgg13"], _VGG),
    "mobilenetv2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)],
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)],
    "resnet18": [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)],
}
# (pre_pool, penultimate_mmkd) where they differ from RepDistiller's feat[-2]
PRE_POOL = {"mobilenetv2": (1280, 2, 2), "ShuffleV2": (1024, 4, 4)}
PENULTIMATE_CAMKD = {"ShuffleV2": (1024, 4, 4)}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Batches of 1–2 images run fastest on one thread; two threads on a shared 2-core box can be 100× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name: str) -> None:
    assert count_parameters(create(name, num_classes=100)) == EXPECTED_PARAMS[name]


def test_registry_lists_the_zoo_in_order() -> None:
    assert available_models() == MODELS
    assert set(available_models(include_aliases=True)) - set(MODELS) == {
        "mobile_half",
        "vgg8_bn",
        "vgg11_bn",
        "vgg13_bn",
    }


def _check_features(model: ZooModel, name: str, x: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Check the named maps of ``model`` on ``x`` against docs/methods.md §3; return them."""
    expected = FEAT_SHAPES[name]
    with torch.no_grad():
        feats = model.forward_features(x)
    names = list(feats)
    assert names[0] == "stem" and names[-3:] == ["pre_pool", "pooled", "logits"]
    assert all(t.shape[0] == x.shape[0] for t in feats.values())
    assert feats["logits"].shape == (x.shape[0], num_classes)
    assert [_shape(feats[n]) for n in model.feat_names] == expected
    for stage in model.stage_names:
        assert _shape(feats[f"{stage}_preact"]) == _shape(feats[stage])
    pre_pool = PRE_POOL.get(name, expected[-2])
    assert _shape(feats["pre_pool"]) == pre_pool
    assert _shape(feats[model.taps["last_map"]]) == pre_pool
    assert _shape(feats[model.taps["hint"]]) == expected[2]
    assert _shape(feats[model.taps["penultimate"]]) == expected[-2]
    assert _shape(feats[model.taps["penultimate_camkd"]]) == PENULTIMATE_CAMKD.get(name, expected[-2])
    assert _shape(feats[model.taps["penultimate_mmkd"]]) == pre_pool
    return feats


@pytest.mark.parametrize("name", MODELS)
def test_named_features(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=100).eval()
    assert len(model.feat_names) == len(FEAT_SHAPES[name])
    assert model.stage_names == model.feat_names[1:-1]
    x = torch.randn(2, 3, 32, 32)
    feats = _check_features(model, name, x, 100)
    with torch.no_grad():
        logits = model(x)
        head = model.classifier_head(feats["pre_pool"])
    assert type(logits) is Tensor and torch.equal(feats["logits"], logits)
    torch.testing.assert_close(head, logits)
    fc = model.fc_layer()
    assert isinstance(fc, nn.Linear) and fc.out_features == 100
    cams = torch.einsum("cd,bdhw->bchw", fc.weight, feats["pre_pool"])
    torch.testing.assert_close(cams.mean((2, 3)) + fc.bias, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_ten_classes_one_channel(name: str) -> None:
    model = create(name, num_classes=10, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert type(out) is Tensor and out.shape == (2, 10)


FAMILIES = ["resnet8x4", "wrn_40_2", "vgg8", "mobilenetv2", "ShuffleV1", "ShuffleV2", "resnet18"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_features_per_family_channels_and_batch(name: str, in_channels: int, num_classes: int) -> None:
    """B=2 in train mode (batch statistics) and B=1 in eval mode, for 1- and 3-channel inputs."""
    torch.manual_seed(0)
    model = create(name, num_classes=num_classes, in_channels=in_channels)
    _check_features(model.train(), name, torch.randn(2, in_channels, 32, 32), num_classes)
    _check_features(model.eval(), name, torch.randn(1, in_channels, 32, 32), num_classes)


@pytest.mark.parametrize("name", FAMILIES)
def test_last_map_hook_and_channels_last(name: str) -> None:
    torch.manual_seed(0)
    model = create(name).eval()
    seen: list[Tensor] = []
    model.last_map.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.equal(seen[0], feats["pre_pool"])
    torch.testing.assert_close(cl, feats["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["wrn_16_2", "ShuffleV2"])
def test_compiles_without_graph_breaks(name: str) -> None:
    model = create(name).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_features_updates_each_batchnorm_once(name: str) -> None:
    """Taking the pre-activation maps (e.g. WRN's BN'd stage outputs) must not run a BatchNorm twice."""
    model = create(name).train()
    model.forward_features(torch.randn(2, 3, 32, 32))
    counts = {n: int(m.num_batches_tracked) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(counts.values()) == {1}, counts


@pytest.mark.parametrize("name", MODELS)
def test_batchnorm_init(name: str) -> None:
    for m in create(name).modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_linear_init_follows_repdistiller() -> None:
    torch.manual_seed(0)
    vgg = create("vgg13").fc_layer()
    assert torch.all(vgg.bias == 0) and abs(vgg.weight.std().item() - 0.01) < 1e-3
    assert torch.all(create("wrn_40_2").fc_layer().bias == 0)


# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet9'") as err:
        create("resnet9")
    for name in available_models(include_aliases=True):
        assert name in str(err.value)


@pytest.mark.parametrize("name", available_models(include_aliases=True))
def test_every_registry_entry_builds_and_runs(name: str) -> None:
    model = create(name)
    assert isinstance(model, ZooModel)
    assert create(name).__class__ is model.__class__
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_aliases_and_duplicates() -> None:
    assert isinstance(create("mobile_half"), MobileNetV2)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet8")(lambda num_classes=100, in_channels=3: nn.Linear(1, 1))
    assert available_models() == MODELS


# ---------------------------------------------------------------------------------------------------------------
# Cost table


def _hook_macs(model: nn.Module) -> int:
    """Conv and linear MACs counted with forward hooks (independent of FlopCounterMode)."""
    total = 0

    def hook(m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    return total


@pytest.mark.parametrize("name", ["resnet8", "vgg8", "mobilenetv2", "ShuffleV1", "ShuffleV2"])
def test_count_flops_reports_macs(name: str) -> None:
    assert count_flops(create(name)) == _hook_macs(create(name))


def test_zoo_table() -> None:
    rows = zoo_table()
    assert [row["name"] for row in rows] == MODELS
    for row in rows:
        name = row["name"]
        assert row["params"] == EXPECTED_PARAMS[name]
        assert row["mmacs"] > 0 and row["macs"] == round(row["mmacs"] * 1e6)
        assert row["pre_pool"] == PRE_POOL.get(name, FEAT_SHAPES[name][-2])
        assert row["hint"] == FEAT_SHAPES[name][2]


# ---------------------------------------------------------------------------------------------------------------
# External checkpoints: RepDistiller state dicts built independently of mkdlab's classes

KeySpec = list[tuple[str, tuple[int, ...]]]


def _bn_keys(prefix: str, c: int) -> KeySpec:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def repdistiller_resnet8_keys() -> KeySpec:
    """RepDistiller ``resnet8``: n=1 BasicBlock per stage, widths 16/16/32/64, ``downsample`` = conv1×1 + BN."""
    keys: KeySpec = [("conv1.weight", (16, 3, 3, 3)), *_bn_keys("bn1", 16)]
    cin = 16
    for i, (c, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        p = f"layer{i}.0"
        keys += [(f"{p}.conv1.weight", (c, cin, 3, 3)), *_bn_keys(f"{p}.bn1", c)]
        keys += [(f"{p}.conv2.weight", (c, c, 3, 3)), *_bn_keys(f"{p}.bn2", c)]
        if stride != 1 or cin != c:
            keys += [(f"{p}.downsample.0.weight", (c, cin, 1, 1)), *_bn_keys(f"{p}.downsample.1", c)]
        cin = c
    return keys + [("fc.weight", (100, 64)), ("fc.bias", (100,))]


def repdistiller_wrn_16_2_keys() -> KeySpec:
    """RepDistiller ``wrn_16_2``: 2 pre-activation blocks per NetworkBlock, widths 16/32/64/128."""
    keys: KeySpec = [("conv1.weight", (16, 3, 3, 3))]
    cin = 16
    for b, c in enumerate([32, 64, 128], start=1):
        for j in range(2):
            p, i_n = f"block{b}.layer.{j}", cin if j == 0 else c
            keys += [*_bn_keys(f"{p}.bn1", i_n), (f"{p}.conv1.weight", (c, i_n, 3, 3))]
            keys += [*_bn_keys(f"{p}.bn2", c), (f"{p}.conv2.weight", (c, c, 3, 3))]
            if i_n != c:
                keys += [(f"{p}.convShortcut.weight", (c, i_n, 1, 1))]
        cin = c
    return keys + [*_bn_keys("bn1", 128), ("fc.weight", (100, 128)), ("fc.bias", (100,))]


def repdistiller_vgg8_keys() -> KeySpec:
    """RepDistiller ``vgg8_bn``: blocks of one conv(bias) + BN, widths 64/128/256/512/512, ``classifier``."""
    keys: KeySpec = []
    for b, (cin, c) in enumerate([(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]):
        keys += [(f"block{b}.0.weight", (c, cin, 3, 3)), (f"block{b}.0.bias", (c,)), *_bn_keys(f"block{b}.1", c)]
    return keys + [("classifier.weight", (100, 512)), ("classifier.bias", (100,))]


def random_state(keys: KeySpec, seed: int = 0) -> dict[str, Tensor]:
    """Random weights of a sensible scale and plausible BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(78_000)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1 and key.endswith(".weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def _bn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5
    )


def ref_resnet8(sd: dict[str, Tensor], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """RepDistiller ``ResNet.forward(x, is_feat=True)`` written functionally."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    feats = [x]
    for i, stride in enumerate((1, 2, 2), start=1):
        p = f"layer{i}.0"
        out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
        out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
        if f"{p}.downsample.0.weight" in sd:
            x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
        x = F.relu(out + x)
        feats.append(x)
    pooled = x.mean((2, 3))
    return [*feats, pooled], F.linear(pooled, sd["fc.weight"], sd["fc.bias"])


def ref_wrn_16_2(sd: dict[str, Tensor], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """RepDistiller ``WideResNet.forward(x, is_feat=True)`` written functionally."""
    x = F.conv2d(x, sd["conv1.weight"], padding=1)
    feats = [x]
    for b, stride in enumerate((1, 2, 2), start=1):
        for j in range(2):
            p, s = f"block{b}.layer.{j}", stride if j == 0 else 1
            act = F.relu(_bn(x, sd, f"{p}.bn1"))
            out = F.relu(_bn(F.conv2d(act, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn2"))
            out = F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1)
            shortcut = sd.get(f"{p}.convShortcut.weight")
            x = out + (x if shortcut is None else F.conv2d(act, shortcut, stride=s))
        feats.append(x)
    pooled = F.relu(_bn(x, sd, "bn1")).mean((2, 3))
    return [*feats, pooled], F.linear(pooled, sd["fc.weight"], sd["fc.bias"])


def ref_vgg8(sd: dict[str, Tensor], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """RepDistiller ``VGG.forward(x, is_feat=True)`` for 32×32 inputs, written functionally."""
    feats = []
    for b in range(5):
        if b in (1, 2, 3):
            x = F.max_pool2d(x, 2, 2)
        x = F.relu(_bn(F.conv2d(x, sd[f"block{b}.0.weight"], sd[f"block{b}.0.bias"], padding=1), sd, f"block{b}.1"))
        feats.append(x)
    pooled = x.mean((2, 3))
    return [*feats, pooled], F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"])


REFERENCES: dict[str, tuple[Callable[[], KeySpec], Callable[..., tuple[list[Tensor], Tensor]]]] = {
    "resnet8": (repdistiller_resnet8_keys, ref_resnet8),
    "wrn_16_2": (repdistiller_wrn_16_2_keys, ref_wrn_16_2),
    "vgg8": (repdistiller_vgg8_keys, ref_vgg8),
}


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name", list(REFERENCES))
def test_repdistiller_checkpoint_matches_functional_forward(name: str, tmp_path: Path) -> None:
    keys_fn, reference = REFERENCES[name]
    state = random_state(keys_fn())
    path = _save({"model": state, "epoch": 240, "best_acc": torch.tensor(70.0)}, tmp_path / f"{name}.pth")
    model = create(name)
    meta = load_external_checkpoint(model, path)
    assert meta == {"epoch": 240, "best_acc": 70.0}

    model = model.double().eval()
    sd64 = {k: v.double() for k, v in state.items()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_feats, ref_logits = reference(sd64, x)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert len(ref_feats) == len(model.feat_names)
    for feat_name, ref in zip(model.feat_names, ref_feats, strict=True):
        torch.testing.assert_close(feats[feat_name], ref, rtol=1e-10, atol=1e-10)
    if name == "wrn_16_2":  # RepDistiller's preact=True: the BN that reads each stage output, before its ReLU
        torch.testing.assert_close(feats["stage1_preact"], _bn(ref_feats[1], sd64, "block2.layer.0.bn1"))
        torch.testing.assert_close(feats["stage3_preact"], _bn(ref_feats[3], sd64, "bn1"))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"net": sd, "acc": 1.0},
        lambda sd: sd,
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict", "net", "bare", "dataparallel"],
)
def test_checkpoint_layouts_load(wrap: Callable[[dict], dict], tmp_path: Path) -> None:
    state = random_state(repdistiller_resnet8_keys(), seed=3)
    model = create("resnet8")
    load_external_checkpoint(model, _save(wrap(state), tmp_path / "ckpt.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_in_memory_checkpoint_without_num_batches_tracked() -> None:
    state = {k: v for k, v in random_state(repdistiller_vgg8_keys()).items() if "num_batches" not in k}
    model = create("vgg8")
    assert load_external_checkpoint(model, {"model": state, "epoch": 1}) == {"epoch": 1}
    assert torch.equal(model.classifier.weight, state["classifier.weight"])


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda sd: sd.pop("layer2.0.downsample.0.weight"), "missing keys (1): layer2.0.downsample.0.weight"),
        (lambda sd: sd.update({"layer4.0.conv1.weight": torch.zeros(1)}), "unexpected keys (1): layer4.0.conv1"),
        (lambda sd: sd.update({"fc.weight": torch.zeros(10, 64)}), "fc.weight: checkpoint (10, 64) vs model (100"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_mismatched_checkpoint_is_refused(edit: Callable[[dict], object], needle: str, tmp_path: Path) -> None:
    state = random_state(repdistiller_resnet8_keys())
    edit(state)
    path = _save({"model": state}, tmp_path / "bad_resnet8.pth")
    with pytest.raises(ValueError) as err:
        load_external_checkpoint(create("resnet8"), path)
    message = str(err.value)
    assert str(path) in message and "ResNet" in message and needle in message


def test_checkpoint_without_state_dict_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no state dict found"):
        load_external_checkpoint(create("resnet8"), _save({"epoch": 3}, tmp_path / "meta.pth"))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = _save({"model": {"fc.weight": _Exploit(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only") as err:
        load_external_checkpoint(create("resnet8"), path)
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()
    # control: the file really is an exploit when loaded without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()
