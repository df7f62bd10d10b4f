"""Typed experiment configs, YAML presets and ``key=value`` overrides.

An experiment is one :class:`ExperimentConfig`: the data, the student, the teachers, the method with its
hyper-parameters, the optimisation recipe and where outputs go. Presets live in ``mkdlab/configs/*.yaml``; any key
can be overridden from the command line with a dotted path (``train.lr=0.1``, ``method.params.temperature=2``).

Unknown keys, wrong types and unknown model, dataset or method names are errors that list the valid choices.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mkdlab.typed import ConfigError, from_dict, to_dict

PRESET_PACKAGE = "mkdlab.configs"


@dataclass
class DataConfig:
    """Which dataset and how it is fed."""

    dataset: str = "fashion_mnist_mini"
    batch_size: int = 64
    #: ``device``: whole dataset on the device, augmentation there; ``torch``: DataLoader + PIL transforms.
    loader: Literal["auto", "device", "torch"] = "auto"
    root: str | None = None
    num_workers: int = 2
    download: bool = False


@dataclass
class TeachersConfig:
    """The teachers: trained into (or loaded from) the teacher pool, one per seed."""

    #: one architecture for every teacher, or one per teacher.
    arch: str | list[str] = "resnet20"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 30
    #: cap each teacher's training at this many steps (smoke runs); recorded in the pool entry's name.
    max_steps: int | None = None
    lr: float = 0.05
    #: explicit teacher-pool entry names (e.g. imported checkpoints); when given, ``arch``/``seeds`` are unused.
    entries: list[str] = field(default_factory=list)

    def architectures(self) -> list[str]:
        """The architecture of each teacher, in seed order."""
        return list(self.arch) if isinstance(self.arch, list) else [self.arch] * len(self.seeds)


@dataclass
class MethodConfig:
    """A method by name and its hyper-parameters (validated against the method's ``Params``)."""

    name: str = "ce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The optimisation recipe (methods.md §2): SGD with step decay of the learning rate."""

    epochs: int = 240
    #: stop after this many optimiser steps (the step budget); ``None`` = run every epoch.
    max_steps: int | None = None
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    #: epochs after which the lr is multiplied by ``lr_decay``, given for a run of ``milestones_of`` epochs and
    #: scaled proportionally to ``epochs`` (150/180/210 of 240 → 19/23/26 of 30).
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    milestones_of: int = 240
    lr_decay: float = 0.1
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    #: ``auto`` = bf16 autocast on CUDA, fp32 on CPU (bf16 is far slower on CPUs).
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    #: ``auto`` = on: channels_last is faster on CUDA and, through oneDNN, on CPU as well.
    channels_last: Literal["auto", "on", "off"] = "auto"
    eval_every: int = 1
    #: also checkpoint every N steps inside an epoch (0 = only at epoch ends).
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50


@dataclass
class OutputConfig:
    """Where a run writes its checkpoints and history."""

    dir: str = "runs"
    visdom: bool = False
    visdom_port: int = 8097


@dataclass
class ExperimentConfig:
    """One training run: a student trained by a method, from teachers, on a dataset."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    student: str = "resnet8"
    teachers: TeachersConfig | None = None
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def run_dir(self) -> Path:
        """The directory of this run's checkpoints and history."""
        return Path(self.output.dir) / self.name


# -- loading -------------------------------------------------------------------------------------------------------
def available_presets() -> list[str]:
    """Names of the YAML presets shipped in ``mkdlab/configs``."""
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def read_preset(name_or_path: str | Path) -> dict[str, Any]:
    """The raw mapping of a preset name (``mkdlab/configs/<name>.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        resource = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"no preset or YAML file {str(name_or_path)!r}; presets: {', '.join(available_presets())}"
            )
        text = resource.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``dotted.key=value`` applied (values parsed as YAML)."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=0.1")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def load_config(
    preset: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = ()
) -> ExperimentConfig:
    """Load a preset (name, YAML path or mapping), apply overrides, then validate every key, type and name."""
    if preset is None:
        data: Mapping[str, Any] = {}
    elif isinstance(preset, Mapping):
        data = preset
    else:
        data = read_preset(preset)
    config = from_dict(ExperimentConfig, apply_overrides(data, overrides))
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Check names against the registries and method hyper-parameters against the method's ``Params``."""
    from mkdlab.data import available_datasets
    from mkdlab.models import available_models

    _check_choice("data.dataset", config.data.dataset, available_datasets())
    _check_choice("student", config.student, available_models())
    method = _method_class(config.method.name)
    method_params(config)
    if config.teachers is not None:
        for arch in config.teachers.architectures():
            _check_choice("teachers.arch", arch, available_models())
        if isinstance(config.teachers.arch, list) and len(config.teachers.arch) != len(config.teachers.seeds):
            raise ConfigError("teachers.arch: give one architecture, or one per entry of teachers.seeds")
    if method.teachers_required != "none" and config.teachers is None:
        raise ConfigError(f"method {config.method.name!r} needs teachers; add a 'teachers:' section")
    if config.train.epochs < 1:
        raise ConfigError("train.epochs must be at least 1")
    if config.data.batch_size < 1:
        raise ConfigError("data.batch_size must be at least 1")


def method_params(config: ExperimentConfig) -> Any:
    """The method's typed ``Params`` built from ``method.params``."""
    return from_dict(_method_class(config.method.name).Params, config.method.params, "method.params")


def _method_class(name: str) -> Any:
    from mkdlab.methods.registry import get_method

    try:
        return get_method(name)
    except ValueError as err:
        raise ConfigError(f"method.name: {err}") from None


def _check_choice(where: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: unknown name {value!r}; choose one of: {', '.join(choices)}")


def dump_config(config: ExperimentConfig) -> str:
    """The config as YAML (what a run directory stores as ``config.yaml``)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "MethodConfig",
    "OutputConfig",
    "TeachersConfig",
    "TrainConfig",
    "apply_overrides",
    "available_presets",
    "dump_config",
    "load_config",
    "method_params",
    "read_preset",
    "validate",
]
