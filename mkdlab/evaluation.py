"""Evaluate a finished run's best student or a pool teacher on a test set (``python -m mkdlab eval``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from mkdlab.config import ExperimentConfig, load_config
from mkdlab.data import dataset_info, make_loaders
from mkdlab.engine.checkpoint import load_state_strict
from mkdlab.engine.device import resolve_device
from mkdlab.engine.evaluation import evaluate_model
from mkdlab.engine.trainer import BEST_STUDENT
from mkdlab.methods.base import Batch
from mkdlab.models import create
from mkdlab.storage import load_safely
from mkdlab.teachers import TeacherPool


def load_run_student(run_dir: str | Path) -> tuple[nn.Module, ExperimentConfig]:
    """The best student of a run directory (``best_student.pt``, weights only) and the run's config, on the CPU."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {run_dir} a run directory written by mkdlab train?")
    config = load_config(yaml.safe_load(config_path.read_text()))
    info = dataset_info(config.data.dataset)
    student = create(config.student, num_classes=info.num_classes, in_channels=info.in_channels)
    load_state_strict(student, load_safely(run_dir / BEST_STUDENT), run_dir / BEST_STUDENT)
    return student.eval(), config


def evaluate_run(run_dir: Path, device: str = "auto") -> dict[str, float]:
    """Test metrics of ``run_dir/best_student.pt`` with the run's own ``config.yaml``."""
    student, config = load_run_student(run_dir)
    return _evaluate(student, config.data.dataset, device, config.data.root)


def evaluate_teacher(name: str, dataset: str | None = None, device: str = "auto") -> dict[str, float]:
    """Test metrics of the pool teacher ``name`` (on its own dataset unless another is given)."""
    pool = TeacherPool()
    teacher = pool.load(name)
    return _evaluate(teacher, dataset or pool.entries()[name].dataset, device)


def _evaluate(model: nn.Module, dataset: str, device: str, root: str | None = None) -> dict[str, float]:
    target = resolve_device(device)
    _, test_loader = make_loaders(dataset, 256, device=target, root=root)
    return evaluate_model(model.to(target), test_loader, target)


def ensemble_accuracy(models: Sequence[nn.Module], loader: Iterable[Sequence[Tensor]], device: torch.device) -> float:
    """Top-1 accuracy (%) of the ensemble that averages the models' softmax outputs."""
    logits, labels = collect_logits(models, loader, device)
    return 100.0 * float((logits.softmax(dim=2).mean(dim=0).argmax(dim=1) == labels).float().mean())


@torch.no_grad()
def collect_logits(models: Sequence[nn.Module], loader: Iterable[Sequence[Tensor]],
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits of every model on every sample of ``loader`` (K×N×C, on the CPU) and the labels (N,)."""
    logits, labels = [], []
    for item in loader:
        batch = Batch.from_loader(item, device)
        logits.append(torch.stack([m.to(device).eval()(batch.images) for m in models]).float().cpu())
        labels.append(batch.labels.cpu())
    return torch.cat(logits, dim=1), torch.cat(labels)
