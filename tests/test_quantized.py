"""Int8 teachers (``teachers.compile: int8``): calibrated on the first batches while the float32 teacher answers,
then an int8 copy close to the teacher on real test data; maps stay exact; a failure stays eager; the bench times it.

Thresholds. Int8 rounding has no float32-style bound on the logits, so the int8 copy is judged as a classifier on
the real test set of the Fashion-MNIST subset: ``python benchmarks/bench_frozen.py --fidelity`` measured top-1
agreement 97.05–98.75 % and KL(T = 4) 0.0005–0.0073 per image for the three shipped teachers, three calibrations
each (x86 engine). We require 95 % and 0.01: a broken quantisation (a wrong
scale, a lost residual) drops agreement towards chance (10 %) and raises the KL by orders of magnitude.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from mkdlab.data import make_loaders
from mkdlab.methods.ensemble import TeacherEnsemble
from mkdlab.methods.frozen import FrozenTeacher
from mkdlab.teachers import TeacherPool
from tests.test_frozen import assert_float32_close, trained_looking

SHIPPED = "resnet20-fashion_mnist_mini-s0-e8"


@pytest.fixture(scope="module")
def shipped_teacher(tmp_path_factory) -> torch.nn.Module:
    pool = TeacherPool(tmp_path_factory.mktemp("empty-home"))  # only the teachers shipped in the package
    return pool.load(SHIPPED).eval().requires_grad_(False)


def test_an_int8_teacher_answers_exactly_while_calibrating_then_agrees_on_real_test_data(shipped_teacher):
    train, test = make_loaders("fashion_mnist_mini", 64, device="cpu", loader="device", drop_last=True)
    frozen = FrozenTeacher(shipped_teacher, "int8", calibration_batches=3)
    exact_model = copy.deepcopy(shipped_teacher).double()
    with torch.inference_mode():
        for images, _ in itertools.islice(train, 3):
            assert not frozen.quantized
            got = frozen(images)  # the float32 teacher (BN folded) answers while the observers record
            assert_float32_close(got, shipped_teacher(images), exact_model(images.double()))
        assert frozen.quantized and frozen.compile_seconds > 0
        agree = seen = 0
        kl = 0.0
        for images, _ in test:
            exact, approx = shipped_teacher(images), frozen(images)
            agree += int((exact.argmax(1) == approx.argmax(1)).sum())
            kl += F.kl_div(F.log_softmax(approx / 4, 1), F.softmax(exact / 4, 1), reduction="sum").item()
            seen += len(images)
        assert not torch.allclose(approx, exact, rtol=1e-3, atol=1e-3)  # the int8 copy ran, not the teacher
    assert agree / seen >= 0.95 and kl / seen <= 0.01
    assert len(frozen._graphs) == 2  # one graph per batch shape: 64, and the last test batch of 2000 - 31 × 64 = 16
    frozen.clear()
    assert not frozen.quantized and not frozen._graphs


def test_an_int8_ensemble_takes_its_maps_from_the_exact_graph():
    teachers = [trained_looking("resnet8", in_channels=1) for _ in range(2)]
    images = torch.randn(8, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    ensemble = TeacherEnsemble(teachers, batching="loop")
    ensemble.use_compiled("int8")
    for frozen in ensemble.frozen:
        frozen.calibration_batches = 1
    ensemble.logits(images)
    assert all(frozen.quantized for frozen in ensemble.frozen)
    exact = [copy.deepcopy(teacher).double().forward_features(images.double()) for teacher in teachers]
    eager = TeacherEnsemble(teachers, batching="loop").features(images)
    for got, want, reference in zip(ensemble.features(images), eager, exact, strict=True):
        for name in want:
            assert_float32_close(got[name], want[name], reference[name])


def test_a_failing_quantisation_warns_and_stays_eager(monkeypatch, shipped_teacher):
    def broken(*args, **kwargs):
        raise RuntimeError("observer says no")

    monkeypatch.setattr("mkdlab.methods.frozen.prepare_int8", broken)
    frozen = FrozenTeacher(shipped_teacher, "int8")
    images = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="observer says no"):
            out = frozen(images)
        assert torch.equal(out, shipped_teacher(images)) and not frozen.quantized


def test_the_bench_times_int8_teachers_beside_the_exact_ones(capsys):
    from mkdlab.bench import run_step_benchmark

    results = run_step_benchmark(teacher="resnet8", student="resnet8", num_teachers=2, batch_size=8, steps=1,
                                 warmup=1, device="cpu", num_classes=10)
    printed = capsys.readouterr().out
    assert "int8 teachers (approximate" in printed and "of the int8 step" in printed
    assert results["mkdlab_int8"] > 0 and results["2 teachers forward (int8)"] > 0
    assert results["ratio_int8"] == pytest.approx(results["mkdlab_int8"] / results["reference"])


def test_a_run_with_int8_teachers_calibrates_then_distils_from_the_int8_copies(tmp_path):
    from mkdlab.config import load_config
    from mkdlab.experiment import run_experiment, with_method
    from mkdlab.methods.quantized import CALIBRATION_BATCHES

    steps = CALIBRATION_BATCHES + 2
    config = load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                          "teachers": {"arch": "resnet8", "seeds": [0, 1], "epochs": 1, "max_steps": 2,
                                       "compile": "int8"},
                          "train": {"epochs": 1, "max_steps": steps, "device": "cpu", "log_every_steps": 0},
                          "output": {"dir": str(tmp_path / "runs")}})
    result, method = run_experiment(with_method(config, "aver_kd"), pool=TeacherPool(tmp_path / "home", shipped=None),
                                    verbose=False)
    assert result.history[-1]["step"] == steps
    assert all(frozen.quantized and len(frozen._graphs) == 1 for frozen in method.ensemble.frozen)
