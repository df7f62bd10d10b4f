"""The composition root: the one module that knows every registry (datasets, models, methods) and the teacher
pool, and turns a config into a finished run.

* :func:`load_experiment` parses a preset (:func:`mkdlab.config.load_config`) and :func:`validate` checks its names
  and hyper-parameters against the registries — what every command, study and notebook calls;
* :func:`teachers_for` is the one rule of which teachers a method gets; :func:`with_method` builds the experiment
  of one method on a shared base (notebooks, studies, the demo), :func:`lesson_config` the notebooks' base;
* :func:`run_experiment` loads (or trains) the teachers through the pool, builds the student and the method, and
  hands everything to the one :class:`~mkdlab.engine.trainer.Trainer`; under ``torchrun`` each process trains its
  rank's part (:class:`~mkdlab.engine.distributed.DistributedContext`), rank 0 alone logs and writes, and a group
  restarted by ``torchrun`` resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mkdlab.config import (
    ExperimentConfig,
    MethodConfig,
    TeachersConfig,
    apply_profile,
    dump_config,
    load_config,
    read_preset,
)
from mkdlab.data import available_datasets, dataset_info, make_loaders
from mkdlab.engine.device import resolve_device
from mkdlab.engine.distributed import DistributedContext
from mkdlab.engine.loggers import make_loggers, progress
from mkdlab.engine.seeding import seed_everything
from mkdlab.engine.trainer import FitResult, Trainer
from mkdlab.methods.base import Distiller
from mkdlab.methods.frozen import TEACHER_COMPILERS, compiler_for_run
from mkdlab.methods.registry import get_method
from mkdlab.models import available_models, create
from mkdlab.profiles import Profile, current_profile
from mkdlab.storage import save_atomic_text
from mkdlab.teachers import TeacherPool, entry_name
from mkdlab.typed import ConfigError, from_dict, to_dict

#: the preset the notebooks and the demo share: three resnet20 teachers, a resnet8 student, the embedded data.
LESSON_PRESET = "demo"


# -- configs: parsing, names, teachers -------------------------------------------------------------------------------
def load_experiment(preset: str | Path | Mapping[str, Any] | None = None,
                    overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Parse ``preset`` with ``overrides`` and validate it: the config every command trains."""
    config = load_config(preset, overrides)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Check the dataset, student, teacher and method names against the registries, the method's
    hyper-parameters against its ``Params``, and that the configured teachers suit the method."""
    _check_choice("data.dataset", config.data.dataset, available_datasets())
    _check_choice("student", config.student, available_models())
    if config.teachers is not None:
        for arch in config.teachers.architectures():
            _check_choice("teachers.arch", arch, available_models())
        _check_choice("teachers.compile", config.teachers.compile, list(TEACHER_COMPILERS))
    method_params(config)
    teachers_for(config.method.name, config.teachers)


def method_class(name: str) -> type[Distiller]:
    """The registered method ``name``; an unknown name is a :class:`ConfigError` listing the methods."""
    try:
        return get_method(name)
    except ValueError as err:
        raise ConfigError(f"method.name: {err}") from None


def method_params(config: ExperimentConfig) -> Any:
    """The method's typed ``Params`` built from ``method.params`` (unknown keys and wrong types are errors)."""
    return from_dict(method_class(config.method.name).Params, config.method.params, "method.params")


def teachers_for(method: str, teachers: TeachersConfig | None, teacher: int | str = 0) -> TeachersConfig | None:
    """The teachers ``method`` learns from, out of the configured ``teachers``: the one rule, from the method's
    ``teachers_required`` and ``min_teachers``.

    A method without teachers gets none (the configured ones are not loaded); a single-teacher method gets teacher
    number ``teacher`` of the list (or, for a string, that teacher-pool entry); a multi-teacher method gets all of
    them. Missing or too few teachers are a :class:`ConfigError`.
    """
    cls = method_class(method)
    if cls.teachers_required == "none":
        return None
    if teachers is None:
        raise ConfigError(f"method {method!r} needs teachers; add a 'teachers:' section")
    if cls.teachers_required == "one":
        teachers = _one_teacher(teachers, teacher, method)
    try:
        cls.check_teacher_count(len(teachers.entries or teachers.seeds))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return teachers


def _one_teacher(teachers: TeachersConfig, teacher: int | str, method: str) -> TeachersConfig:
    if isinstance(teacher, str):
        return dataclasses.replace(teachers, entries=[teacher])
    count = len(teachers.entries or teachers.seeds)
    if count == 1 and teacher == 0:
        return teachers
    if not 0 <= teacher < count:
        raise ConfigError(f"method {method!r}: teacher {teacher} does not exist (the config has {count})")
    if teachers.entries:
        return dataclasses.replace(teachers, entries=[teachers.entries[teacher]])
    return dataclasses.replace(teachers, arch=[teachers.architectures()[teacher]], seeds=[teachers.seeds[teacher]])


def with_method(base: ExperimentConfig, method: str, *, params: Mapping[str, Any] | None = None,
                name: str | None = None, teacher: int | str = 0) -> ExperimentConfig:
    """``base`` with its student trained by ``method`` (hyper-parameters ``params``), named ``name`` (default:
    the method's name), from the teachers :func:`teachers_for` gives it (``teacher``: which one a
    single-teacher method learns from)."""
    return dataclasses.replace(base, name=name or method, method=MethodConfig(method, dict(params or {})),
                               teachers=teachers_for(method, base.teachers, teacher))


def lesson_config(profile: Profile | str | None = None, device: str = "auto",
                  overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The base of the notebooks and the demo: the ``demo`` preset with the overlay of ``profile`` (default: the
    current one, :func:`mkdlab.profiles.current_profile`), ``train.device=device``, runs under
    ``runs/<profile>`` (so that a smoke run never replaces a quick one), then ``overrides``."""
    profile = Profile(profile) if profile is not None else current_profile()
    return load_experiment(apply_profile(read_preset(LESSON_PRESET), profile),
                           [f"train.device={device}", f"output.dir=runs/{profile.value}", *overrides])


def teacher_entry_names(config: ExperimentConfig) -> list[str]:
    """The teacher-pool names of ``config``'s teachers, in order."""
    teachers = config.teachers
    if teachers is None:
        return []
    if teachers.entries:
        return list(teachers.entries)
    return [entry_name(arch, config.data.dataset, seed, teachers.epochs, teachers.max_steps)
            for arch, seed in zip(teachers.architectures(), teachers.seeds, strict=True)]


def best_teacher(config: ExperimentConfig, pool: TeacherPool | None = None) -> str:
    """The pool name of the most accurate of ``config``'s teachers (test top-1), training missing ones first."""
    pool = pool or TeacherPool()
    load_teachers(config, pool)
    entries = pool.entries()
    return max(teacher_entry_names(config), key=lambda name: entries[name].top1 or 0.0)


def _check_choice(where: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: unknown name {value!r}; choose one of: {', '.join(choices)}")


# -- building and running ----------------------------------------------------------------------------------------------
def build_student(config: ExperimentConfig) -> nn.Module:
    """The student network, initialised from ``train.seed``."""
    info = dataset_info(config.data.dataset)
    seed_everything(config.train.seed)
    return create(config.student, num_classes=info.num_classes, in_channels=info.in_channels)


def build_method(config: ExperimentConfig, teachers: Sequence[nn.Module] = ()) -> Distiller:
    """The configured method around a fresh student and the given teachers."""
    return method_class(config.method.name)(build_student(config), list(teachers), method_params(config))


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
    """Train the configured student with the configured method (from the teachers :func:`teachers_for` gives
    it); returns the result and the trained method."""
    config = dataclasses.replace(config, teachers=teachers_for(config.method.name, config.teachers))
    teachers = load_teachers(config, pool, verbose=verbose)
    return _fit(config, teachers, verbose=verbose, resume=resume, record_extras=record_extras)


def _fit(config: ExperimentConfig, teachers: Sequence[nn.Module], *, verbose: bool, resume: bool,
         record_extras: bool = False) -> tuple[FitResult, Distiller]:
    method = build_method(config, teachers)
    dist = DistributedContext.from_environment(resolve_device(config.train.device))
    if dist.distributed and config.data.loader == "torch":
        raise ConfigError("a run of several processes needs data.loader=device (or auto): only the device loader "
                          "shards each epoch's global order over the ranks")
    device = dist.device(resolve_device(config.train.device))
    train_loader, test_loader = _loaders(config, method, device, dist)
    if config.teachers is not None:
        steps = config.train.epochs * len(train_loader)  # type: ignore[arg-type]
        steps = min(steps, config.train.max_steps) if config.train.max_steps is not None else steps
        method.ensemble.use_compiled(compiler_for_run(config.teachers.compile, steps))  # type: ignore[arg-type]
    run_dir = config.run_dir()
    loggers = []
    if dist.is_main:
        save_atomic_text(dump_config(config), run_dir / "config.yaml")
        loggers = make_loggers(run_dir, console=verbose, visdom=config.output.visdom,
                               visdom_port=config.output.visdom_port, run_name=config.name,
                               total_epochs=config.train.epochs)
    trainer = Trainer(method, train_loader, test_loader, config.train, run_dir=run_dir, callbacks=loggers,
                      experiment=to_dict(config), record_extras=record_extras,
                      progress=progress if verbose and dist.is_main else None, distributed=dist)
    result = trainer.fit(resume=resume or dist.restarted)
    return result, method


def _loaders(config: ExperimentConfig, method: Distiller, device: Any, dist: DistributedContext) -> tuple[Any, Any]:
    """The training loader (this rank's block of each global batch) and the test loader of ``config``."""
    try:
        return make_loaders(
            config.data.dataset, config.data.batch_size, device=device, root=config.data.root,
            loader=config.data.loader, seed=config.train.seed, drop_last=method.needs_drop_last,
            with_index=method.needs_indices, num_workers=config.data.num_workers, download=config.data.download,
            rank=dist.rank, world_size=dist.world_size,
        )
    except ValueError as err:
        if not dist.distributed:
            raise
        raise ConfigError(f"data.batch_size: {err}") from None
