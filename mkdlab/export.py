r"""The distilled student as a deployable file: ONNX or TorchScript, BatchNorm folded, preprocessing in metadata.

``python -m mkdlab export --run DIR --format onnx|torchscript [--out FILE]`` takes the best student of a finished
run (``DIR/best_student.pt``: the student alone, no adapters, no teachers; a run stopped before its last epoch or
step budget is refused unless ``--allow-unfinished``, and the metadata says whether it finished), folds every
BatchNorm that directly follows a convolution into it and writes

* ``FILE`` (default ``DIR/student.onnx`` or ``DIR/student.torchscript.pt``): input ``images``, N×C×H×W float32
  *normalised* images, output ``logits`` N×classes, the batch dimension dynamic;
* the same metadata inside the file (ONNX ``metadata_props``, key ``mkdlab``; a TorchScript extra file
  ``mkdlab.json``) and beside it in ``FILE.json``: normalisation mean/std, input size and channels, class names,
  dataset, method, student architecture, best top-1 and its epoch, the epochs trained and whether the run finished.

**BN folding.** For a convolution :math:`y = W * x + b` read only by a BatchNorm in eval mode,
:math:`\mathrm{BN}(y) = \gamma\,(y-\mu)/\sqrt{\sigma^2+\epsilon} + \beta`, the pair is one convolution with
:math:`W' = W\,\gamma/\sqrt{\sigma^2+\epsilon}` (per output channel) and :math:`b' = (b-\mu)\,\gamma/
\sqrt{\sigma^2+\epsilon} + \beta` (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`). The pairs come from the graph of
``torch.export``: a ``batch_norm`` whose input is a ``conv2d`` with no other user. A BN that reads a residual sum
(the pre-activation BNs of the WRNs) or a conv whose output is also used elsewhere (the WRN stem, which feeds an
identity shortcut) stays as it is. Folding changes only float rounding (``tests/test_export.py``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mkdlab.config import ExperimentConfig
from mkdlab.data import dataset_info
from mkdlab.engine.loggers import completes_the_run, read_history
from mkdlab.engine.trainer import BEST_STUDENT
from mkdlab.evaluation import load_run_student
from mkdlab.typed import ConfigError

FORMATS = ("onnx", "torchscript")
DEFAULT_NAMES = {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}
#: the metadata key in ONNX ``metadata_props`` and the TorchScript extra file's name.
METADATA_KEY = "mkdlab"
TORCHSCRIPT_EXTRA = "mkdlab.json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_OPSET = 17


class ExportError(ConfigError):
    """A run that cannot be exported (no finished student, an unknown format); the message says what to do."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote: the model file, its JSON sidecar and the metadata."""

    path: Path
    sidecar: Path
    metadata: dict[str, Any]


def class_names(dataset: str) -> list[str]:
    """The class names of ``dataset`` (torchvision's list where it has one, else ``"0"``, ``"1"``, …)."""
    info = dataset_info(dataset)
    if info.name.startswith("fashion_mnist"):
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)
    return [str(i) for i in range(info.num_classes)]


def fold_batchnorms(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Fold every eval-mode BatchNorm that reads a convolution's output (and nothing else does) into that conv.

    The folded conv replaces the conv, an :class:`~torch.nn.Identity` the BN; ``model`` is changed in place and
    returned with the ``(conv, bn)`` module names folded. ``example`` is one input for ``torch.export``.
    """
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (example,), strict=False)
    owner = {**program.graph_signature.inputs_to_parameters, **program.graph_signature.inputs_to_buffers}
    pairs: list[tuple[str, str]] = []
    calls: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default,
                                                          torch.ops.aten.batch_norm.default):
            module = owner[node.args[1].name].rsplit(".", 1)[0]
            calls[module] = calls.get(module, 0) + 1
            source = node.args[0]
            if (node.target is torch.ops.aten.batch_norm.default and source.op == "call_function"
                    and source.target is torch.ops.aten.conv2d.default and len(source.users) == 1):
                pairs.append((owner[source.args[1].name].rsplit(".", 1)[0], module))
    pairs = [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1]  # modules called once
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _replace(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(model, bn_name, nn.Identity())
    return model, pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def run_metadata(run_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    """Preprocessing and provenance of the best student of ``run_dir``, trained by ``config`` (the metadata of an
    exported file)."""
    info = dataset_info(config.data.dataset)
    best = _best_record(run_dir)
    finished = completes_the_run(best, config.train)
    return {
        "format": "mkdlab-student",
        "mkdlab_version": _version(),
        "run": run_dir.name,
        "student": config.student,
        "method": config.method.name,
        "dataset": info.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NCHW float32, normalised: (pixel / 255 - mean) / std per channel",
        "input_size": [info.in_channels, info.image_size, info.image_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "num_classes": info.num_classes,
        "class_names": class_names(info.name),
        "best_top1": best.get("best_top1"),
        "best_epoch": best.get("best_epoch"),
        "epochs_trained": best.get("epoch"),
        "finished": finished,
    }


def _version() -> str:
    try:
        return version("mkdlab")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown"


def _best_record(run_dir: Path) -> Mapping[str, Any]:
    """The run's last history row (it carries the best top-1 so far and its epoch), or ``{}``."""
    history = read_history(run_dir)
    return history[-1] if history else {}


def deployable_student(run_dir: str | Path, allow_unfinished: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The best student of ``run_dir`` with BN folded (eval mode, CPU, float32) and its metadata; a run that
    stopped before its end is an :class:`ExportError` unless ``allow_unfinished``."""
    run_dir = _checked_run(Path(run_dir))
    student, config = load_run_student(run_dir)
    metadata = run_metadata(run_dir, config)
    if not metadata["finished"] and not allow_unfinished:
        raise ExportError(_unfinished_message(run_dir, config, metadata))
    example = torch.zeros(2, *metadata["input_size"])
    folded, pairs = fold_batchnorms(student.float().eval(), example)
    metadata["folded_batchnorms"] = len(pairs)
    return folded.eval(), metadata


def _checked_run(run_dir: Path) -> Path:
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.yaml): pass the folder that "
                          f"`python -m mkdlab train` wrote, e.g. runs/ce-resnet8")
    if not (run_dir / BEST_STUDENT).is_file():
        raise ExportError(f"{run_dir} has no finished student ({BEST_STUDENT} is written after the first "
                          f"evaluated epoch): train it first, or resume it with `python -m mkdlab train "
                          f"{run_dir / 'config.yaml'} --resume`")
    return run_dir


def _unfinished_message(run_dir: Path, config: ExperimentConfig, metadata: Mapping[str, Any]) -> str:
    budget = f" (or {config.train.max_steps} steps)" if config.train.max_steps is not None else ""
    done = metadata["epochs_trained"] or 0
    return (f"{run_dir} stopped after epoch {done} of {config.train.epochs}{budget}: its best student so far "
            f"(epoch {metadata['best_epoch']}) is not the run's result. Resume it with `python -m mkdlab train "
            f"{run_dir / 'config.yaml'} --resume`, or pass --allow-unfinished to export that student anyway")


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               allow_unfinished: bool = False) -> Exported:
    """Write the best student of ``run_dir`` as ``fmt`` (``onnx`` | ``torchscript``) to ``out`` plus ``out.json``
    (``allow_unfinished``: also for a run that stopped before its end)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    model, metadata = deployable_student(run_dir, allow_unfinished)
    path = Path(out) if out is not None else run_dir / DEFAULT_NAMES[fmt]
    if path.is_dir():
        raise ExportError(f"--out {path} is a folder: give a file name, e.g. {path / DEFAULT_NAMES[fmt]}")
    return write_model(model, fmt, path, metadata)


def write_model(model: nn.Module, fmt: str, path: str | Path, metadata: Mapping[str, Any]) -> Exported:
    """Write an eval-mode ``model`` (BN already folded) as ``fmt`` to ``path`` with ``metadata`` (which needs
    ``"input_size"``) inside the file and in ``path.json``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "export_format": fmt}
    example = torch.zeros(2, *metadata["input_size"])
    text = json.dumps(metadata, indent=2)
    if fmt == "onnx":
        _write_onnx(model, example, path, text)
    else:
        _write_torchscript(model, example, path, text)
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(text + "\n")
    return Exported(path, sidecar, metadata)


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError('--format onnx needs the onnx package: pip install -e ".[export]"') from None

    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: str) -> None:
    """Trace, freeze (constants inlined) and save with the metadata as an extra file.

    PyTorch 2.10+ marks ``torch.jit`` deprecated (FutureWarning); it still runs in libtorch (C++) deployments, which
    is what this format is for, so those warnings are silenced here.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(torch.jit.freeze(traced), str(path), _extra_files={TORCHSCRIPT_EXTRA: metadata})


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored inside an exported ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    extra = {TORCHSCRIPT_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_EXTRA])
