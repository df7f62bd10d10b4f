"""Frozen compiled teachers: the same logits and maps as the eager modules, to float32 rounding, for every zoo
family; the eager fallbacks; the ensemble and the runs using them.

Tolerance. Folding BatchNorm into a convolution is exact in real arithmetic; in float32 it rounds each folded
weight once more (relative error ≤ eps/2, eps = 2⁻²³) and sums the products in another order. So the compiled
graph's distance from the exact result (the eager model in float64) is of the order of the eager float32 model's
own distance from it: we allow four times that, plus 16 eps of the map's largest magnitude for maps whose eager
error happens to be tiny (a few roundings of the largest term).
"""

from __future__ import annotations

import copy

import pytest
import torch

from mkdlab.methods.ensemble import TeacherEnsemble
from mkdlab.methods.frozen import FrozenTeacher, compile_frozen
from mkdlab.models import create

EPS32 = torch.finfo(torch.float32).eps
#: one model per zoo family (their modules: resnet, resnet x4, wrn, vgg, mobilenetv2, shufflenet v1/v2, resnet18).
FAMILIES = ["resnet8", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "ShuffleV1", "ShuffleV2", "resnet18"]


def trained_looking(arch: str, in_channels: int = 3) -> torch.nn.Module:
    """A model in eval mode whose BatchNorm statistics are not the initial 0/1 (so that folding them matters)."""
    torch.manual_seed(0)
    model = create(arch, num_classes=10, in_channels=in_channels)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, in_channels, 32, 32))
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def assert_float32_close(got: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor) -> None:
    eager_error = (eager.double() - exact).abs().max().item()
    tolerance = 4 * eager_error + 16 * EPS32 * exact.abs().max().item()
    assert (got.double() - exact).abs().max().item() <= tolerance


@pytest.mark.parametrize("arch", FAMILIES)
def test_compiled_logits_and_maps_equal_the_eager_ones_to_float32_rounding(arch):
    model = trained_looking(arch)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    exact_model = copy.deepcopy(model).double()
    with torch.no_grad():
        eager, exact = model.forward_features(images), exact_model.forward_features(images.double())
        maps = compile_frozen(model, images, "jit", features=True)(images)  # the logits are among the maps
    assert set(maps) == set(eager)
    for name in eager:
        assert maps[name].shape == eager[name].shape
        assert_float32_close(maps[name], eager[name], exact[name])
    assert not torch.equal(maps["logits"], eager["logits"])  # a different graph ran (BN folded), not the eager one


def test_a_frozen_teacher_keeps_a_graph_per_kind_of_batch_and_falls_back_to_eager():
    model = trained_looking("resnet8", in_channels=1)
    frozen = FrozenTeacher(model)
    big, small = torch.randn(6, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        out_big, out_small = frozen(big), frozen(small)
    assert len(frozen._graphs) == 2 and frozen.compile_seconds > 0
    with torch.no_grad():
        for out, images in ((out_big, big), (out_small, small)):
            assert_float32_close(out, model(images), copy.deepcopy(model).double()(images.double()))
    # autograd on, or autocast: the eager module answers, bit for bit
    assert torch.equal(frozen(big), model(big))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(frozen(big), model(big))
    assert len(frozen._graphs) == 2
    frozen.clear()
    assert not frozen._graphs


def test_a_failing_compile_warns_once_and_stays_eager(monkeypatch):
    model = trained_looking("resnet8", in_channels=1)

    def broken(*args, **kwargs):
        raise RuntimeError("tracer says no")

    monkeypatch.setattr("mkdlab.methods.frozen.compile_frozen", broken)
    frozen = FrozenTeacher(model)
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="tracer says no"):
            out = frozen(images)
        assert torch.equal(out, model(images))
        assert torch.equal(frozen(images), model(images))  # no second attempt, no second warning
    assert frozen.failed and "tracer says no" in frozen.failed


def test_the_ensemble_runs_compiled_teachers_on_the_cpu_until_turned_off():
    teachers = [trained_looking("resnet8", in_channels=1) for _ in range(2)]
    images = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    eager = TeacherEnsemble(teachers, batching="loop")
    compiled = TeacherEnsemble(teachers, batching="loop")
    compiled.use_compiled("auto")
    exact = torch.stack([copy.deepcopy(t).double()(images.double()) for t in teachers])
    got, expected = compiled.logits(images), eager.logits(images)
    assert_float32_close(got, expected, exact)
    assert not torch.equal(got, expected) and compiled.compile_seconds > 0
    maps = compiled.features(images)
    assert [sorted(m) for m in maps] == [sorted(m) for m in eager.features(images)]
    assert_float32_close(torch.stack([m["logits"] for m in maps]), expected, exact)
    compiled.use_compiled("off")
    assert torch.equal(compiled.logits(images), expected)


def test_runs_compile_their_teachers_when_asked_or_long_enough(tmp_path):
    from mkdlab.config import load_config
    from mkdlab.experiment import run_experiment, with_method
    from mkdlab.methods.frozen import AUTO_MIN_STEPS, compiler_for_run
    from mkdlab.teachers import TeacherPool

    assert compiler_for_run("auto", AUTO_MIN_STEPS - 1) == "off" and compiler_for_run("auto", AUTO_MIN_STEPS) == "auto"
    assert compiler_for_run("jit", 1) == "jit" and compiler_for_run("off", 10**6) == "off"
    base = load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                        "teachers": {"arch": "resnet8", "seeds": [0, 1], "epochs": 1, "max_steps": 2,
                                     "compile": "jit"},
                        "train": {"epochs": 1, "max_steps": 3, "device": "cpu", "log_every_steps": 0},
                        "output": {"dir": str(tmp_path / "runs")}})
    result, method = run_experiment(with_method(base, "aver_kd"), pool=TeacherPool(tmp_path / "home", shipped=None),
                                    verbose=False)
    assert method.ensemble.frozen is not None and method.ensemble.compile_seconds > 0
    assert len(method.ensemble.frozen[0]._graphs) == 1 and result.history[-1]["step"] == 3
