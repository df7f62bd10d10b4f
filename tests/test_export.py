"""``python -m mkdlab export``: the best student of a tiny run as ONNX (run by onnxruntime) and TorchScript (run by
torch), BN folded, gives the PyTorch student's logits on real test images; the metadata describes the preprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mkdlab.cli import main
from mkdlab.data import dataset_info, make_loaders
from mkdlab.evaluation import load_run_student
from mkdlab.export import fold_batchnorms, read_metadata
from mkdlab.models import WideResNet, create


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 3-step ce run of resnet8 on the mini Fashion-MNIST set."""
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MKDLAB_HOME", str(tmp / "home"))
        assert main(["train", "ce", "train.epochs=1", "train.max_steps=3", "data.batch_size=16",
                     f"output.dir={tmp / 'runs'}", "--device", "cpu"]) == 0
    return tmp / "runs" / "ce-resnet8"


@pytest.fixture(scope="module")
def test_images():
    _, loader = make_loaders("fashion_mnist_mini", 64, device="cpu", loader="torch", num_workers=0)
    return next(iter(loader))[0].float()


def test_both_formats_give_the_students_logits_on_test_images(run_dir, test_images, tmp_path, capsys):
    student, _ = load_run_student(run_dir)
    with torch.no_grad():
        expected = student(test_images).numpy()
    onnx_path, ts_path = tmp_path / "s.onnx", tmp_path / "s.pt"
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--out", str(ts_path)]) == 0
    assert "9 BatchNorms folded" in capsys.readouterr().out  # resnet8: every BN follows a conv

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["logits"], {"images": test_images.numpy()})[0]
    with torch.no_grad():
        from_ts = torch.jit.load(str(ts_path))(test_images).numpy()
    # Folding rescales each conv's weights by gamma/sqrt(var+eps) once instead of normalising the activations, and
    # onnxruntime orders its float32 sums differently: rounding differences of a few float32 ulps per layer, grown
    # through 9 layers to ~1e-7 on these logits (measured on this machine); 1e-4 leaves room for other CPUs' kernels.
    np.testing.assert_allclose(from_onnx, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(from_ts, expected, rtol=1e-4, atol=1e-4)
    assert (from_onnx.argmax(1) == expected.argmax(1)).all()

    ops = {node.op_type for node in onnx.load(str(onnx_path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert "batch_norm" not in str(torch.jit.load(str(ts_path)).graph)


def test_the_metadata_is_in_the_file_and_in_the_sidecar(run_dir, tmp_path):
    path = tmp_path / "student.onnx"
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(path)]) == 0
    meta = read_metadata(path)
    assert json.loads((tmp_path / "student.onnx.json").read_text()) == meta
    info = dataset_info("fashion_mnist_mini")
    last = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)
    assert meta["input_size"] == [1, 32, 32] and meta["class_names"][9] == "Ankle boot"
    assert (meta["dataset"], meta["method"], meta["student"]) == ("fashion_mnist_mini", "ce", "resnet8")
    assert meta["best_top1"] == last["best_top1"]
    assert meta["finished"] is True and meta["epochs_trained"] == last["epoch"]
    ts_meta = read_metadata(_export(run_dir, "torchscript"))  # the default name, inside the run
    assert ts_meta == {**meta, "export_format": "torchscript"}


def _export(run_dir, fmt):
    assert main(["export", "--run", str(run_dir), "--format", fmt]) == 0
    return run_dir / {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}[fmt]


@pytest.mark.parametrize("name", ["wrn_10_1", "vgg8"])
def test_folding_keeps_the_function_and_leaves_a_conv_that_feeds_a_shortcut(name):
    torch.manual_seed(0)
    model = WideResNet(10, 1, num_classes=10) if name == "wrn_10_1" else create(name, num_classes=10)
    for module in model.modules():  # non-trivial BN statistics, so that folding changes the weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        folded, pairs = fold_batchnorms(model, x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-10, atol=1e-10)
    bns = [n for n, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if name == "wrn_10_1":  # the stem conv also feeds block1's identity shortcut; the other BNs read sums
        assert ("conv1", "block1.layer.0.bn1") not in pairs and "block1.layer.0.bn1" in bns
        assert pairs == [("block1.layer.0.conv1", "block1.layer.0.bn2"), ("block2.layer.0.conv1",
                         "block2.layer.0.bn2"), ("block3.layer.0.conv1", "block3.layer.0.bn2")]
    else:
        assert bns == [] and len(pairs) > 0


def test_a_run_without_a_finished_student_and_an_unknown_format_are_one_line_errors(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.yaml", unfinished / "config.yaml")
    assert main(["export", "--run", str(unfinished), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mkdlab: error: ") and "has no finished student" in err and "--resume" in err
    assert list(unfinished.iterdir()) == [unfinished / "config.yaml"]  # nothing written
    assert main(["export", "--run", str(tmp_path / "nowhere"), "--format", "onnx"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["export", "--run", str(run_dir), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite': choose one of onnx, torchscript" in capsys.readouterr().err


def test_a_run_stopped_before_its_end_is_refused_unless_allowed(run_dir, tmp_path, capsys):
    import yaml

    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped, ignore=shutil.ignore_patterns("student.*"))
    config = yaml.safe_load((stopped / "config.yaml").read_text())
    config["train"].update(epochs=5, max_steps=None)  # the run's 3 steps are now the start of 5 epochs
    (stopped / "config.yaml").write_text(yaml.safe_dump(config))
    before = sorted(stopped.iterdir())
    assert main(["export", "--run", str(stopped), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "stopped after epoch 1 of 5" in err and "--resume" in err and "--allow-unfinished" in err
    assert sorted(stopped.iterdir()) == before  # nothing written
    assert main(["export", "--run", str(stopped), "--format", "onnx", "--allow-unfinished"]) == 0
    assert "UNFINISHED: stopped after epoch 1" in capsys.readouterr().out
    meta = read_metadata(stopped / "student.onnx")
    assert meta["finished"] is False and meta["epochs_trained"] == 1
