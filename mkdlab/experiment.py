"""From a validated :class:`~mkdlab.config.ExperimentConfig` to a finished run.

:func:`run_experiment` is what ``python -m mkdlab train``, the demo, the notebooks and the teacher pool call: it
builds the loaders, loads (or trains) the teachers through the pool, builds the student and the method, and hands
everything to the one :class:`~mkdlab.engine.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from mkdlab.config import ExperimentConfig, MethodConfig, dump_config, method_params
from mkdlab.data import dataset_info, make_loaders
from mkdlab.engine.device import resolve_device
from mkdlab.engine.loggers import make_loggers, progress
from mkdlab.engine.seeding import seed_everything
from mkdlab.engine.trainer import FitResult, Trainer
from mkdlab.methods.base import Distiller
from mkdlab.methods.registry import get_method
from mkdlab.models import create
from mkdlab.teachers import TeacherPool, entry_name
from mkdlab.typed import to_dict


def build_student(config: ExperimentConfig) -> nn.Module:
    """The student network, initialised from ``train.seed``."""
    info = dataset_info(config.data.dataset)
    seed_everything(config.train.seed)
    return create(config.student, num_classes=info.num_classes, in_channels=info.in_channels)


def build_method(config: ExperimentConfig, teachers: Sequence[nn.Module] = ()) -> Distiller:
    """The configured method around a fresh student and the given teachers."""
    method_cls = get_method(config.method.name)
    return method_cls(build_student(config), list(teachers), method_params(config))


def teacher_config(config: ExperimentConfig, arch: str, seed: int) -> ExperimentConfig:
    """The CE-only experiment that trains one pool teacher for ``config``'s dataset."""
    assert config.teachers is not None
    train = dataclasses.replace(config.train, epochs=config.teachers.epochs, lr=config.teachers.lr, seed=seed,
                                max_steps=config.teachers.max_steps)
    name = entry_name(arch, config.data.dataset, seed, config.teachers.epochs, config.teachers.max_steps)
    return dataclasses.replace(config, name=f"teachers/{name}", student=arch, teachers=None,
                               method=MethodConfig("ce"), train=train)


def load_teachers(config: ExperimentConfig, pool: TeacherPool | None = None, *, verbose: bool = True,
                  resume: bool = True) -> list[nn.Module]:
    """The configured teachers from the pool, training the missing ones first ("load if present, else train")."""
    if config.teachers is None:
        return []
    pool = pool or TeacherPool()
    device = resolve_device(config.train.device)
    if config.teachers.entries:
        return [pool.load(name, device) for name in config.teachers.entries]

    def train(arch: str, dataset: str, seed: int, epochs: int) -> tuple[nn.Module, float]:
        result, method = _fit(teacher_config(config, arch, seed), [], verbose=verbose, resume=resume)
        return method.export_student().cpu(), result.last_top1

    info = dataset_info(config.data.dataset)
    return [
        pool.get_or_train(arch, config.data.dataset, seed, config.teachers.epochs, train, device,
                          max_steps=config.teachers.max_steps, num_classes=info.num_classes,
                          in_channels=info.in_channels)
        for arch, seed in zip(config.teachers.architectures(), config.teachers.seeds, strict=True)
    ]


def run_experiment(config: ExperimentConfig, *, pool: TeacherPool | None = None, resume: bool = False,
                   verbose: bool = True, record_extras: bool = False) -> tuple[FitResult, Distiller]:
    """Train the configured student with the configured method; returns the result and the trained method."""
    teachers = load_teachers(config, pool, verbose=verbose)
    return _fit(config, teachers, verbose=verbose, resume=resume, record_extras=record_extras)


def _fit(config: ExperimentConfig, teachers: Sequence[nn.Module], *, verbose: bool, resume: bool,
         record_extras: bool = False) -> tuple[FitResult, Distiller]:
    method = build_method(config, teachers)
    device = resolve_device(config.train.device)
    train_loader, test_loader = make_loaders(
        config.data.dataset, config.data.batch_size, device=device, root=config.data.root,
        loader=config.data.loader, seed=config.train.seed, drop_last=method.needs_drop_last,
        with_index=method.needs_indices, num_workers=config.data.num_workers, download=config.data.download,
    )
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    loggers = make_loggers(run_dir, console=verbose, visdom=config.output.visdom,
                           visdom_port=config.output.visdom_port, run_name=config.name,
                           total_epochs=config.train.epochs)
    trainer = Trainer(method, train_loader, test_loader, config.train, run_dir=run_dir, callbacks=loggers,
                      experiment=to_dict(config), record_extras=record_extras,
                      progress=progress if verbose else None)
    result = trainer.fit(resume=resume)
    return result, method

