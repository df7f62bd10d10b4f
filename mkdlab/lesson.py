"""What every multi-teacher lesson (notebooks 03–07) starts from, in one call.

Each of those notebooks needs the same objects before its first section: the teacher pool, the device, the three
teachers of the lesson's configuration (trained on first use, "load if present, else train"), readable teacher
names, the class names, a test loader and the teachers' logits on its first batch. :func:`lesson_setup` builds
them from the notebook's ``base`` configuration (:func:`mkdlab.experiment.lesson_config`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mkdlab.config import ExperimentConfig
from mkdlab.data import DatasetInfo, dataset_info, get_dataset, make_loaders
from mkdlab.data.loaders import Loader
from mkdlab.engine.device import resolve_device
from mkdlab.experiment import load_teachers
from mkdlab.teachers import TeacherPool


@dataclass
class Lesson:
    """The shared starting point of a lesson.

    ``images`` and ``labels`` are the first test batch; ``teacher_logits`` holds the teachers' logits on it,
    K×B×C, computed without gradients in eval mode, on the same device as ``images``.
    """

    pool: TeacherPool
    device: torch.device
    teachers: list[nn.Module]
    names: list[str]
    classes: list[str]
    info: DatasetInfo
    test_loader: Loader
    images: Tensor
    labels: Tensor
    teacher_logits: Tensor


def lesson_setup(base: ExperimentConfig, batch_size: int = 256, pool: TeacherPool | None = None,
                 verbose: bool = True) -> Lesson:
    """The teacher pool (default: the standard one), the device of ``base.train.device``, the configured teachers
    (named ``seed <s>``), the test set's class names and loader (``batch_size`` images a batch), its first batch and
    the teachers' logits on that batch."""
    pool = pool or TeacherPool()
    device = resolve_device(base.train.device)
    teachers = load_teachers(base, pool, verbose=verbose)
    names = [f"seed {s}" for s in base.teachers.seeds] if base.teachers is not None else []
    classes = list(get_dataset(base.data.dataset, train=False, transform=None, root=base.data.root).classes)
    _, test_loader = make_loaders(base.data.dataset, batch_size, device=device, root=base.data.root)
    images, labels = next(iter(test_loader))
    with torch.no_grad():
        teacher_logits = (torch.stack([t.to(device).eval()(images) for t in teachers]) if teachers
                          else torch.empty(0, len(images), len(classes), device=images.device))
    return Lesson(pool, device, teachers, names, classes, dataset_info(base.data.dataset), test_loader, images,
                  labels, teacher_logits)
