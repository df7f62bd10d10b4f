"""Typed experiment configs, YAML presets and ``key=value`` overrides.

An experiment is one :class:`ExperimentConfig`: the data, the student, the teachers, the method with its
hyper-parameters, the optimisation recipe and where outputs go. Presets live in ``mkdlab/configs/*.yaml``; a preset
``extends:`` others (the shared recipes of ``mkdlab/configs/base/``) and states only what differs, and the run
profiles are overlays in ``mkdlab/configs/profiles/``, all merged by :func:`merge_config_mappings`. Any key can be
overridden from the command line with a dotted path (``train.lr=0.1``, ``method.params.temperature=2``), after
every layer.

Unknown keys and wrong types are errors that list the valid choices; names (datasets, models, methods) and a
method's hyper-parameters are checked by the composition root, :func:`mkdlab.experiment.load_experiment`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mkdlab.profiles import Profile
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
    #: how the frozen teachers run on the CPU: compiled once per run (``jit``: BatchNorm folded, weights pre-packed
    #: for oneDNN; ``inductor``: torch.compile with freezing), ``auto`` (``jit`` for runs of 50 steps or more, eager
    #: for shorter ones), ``int8`` (logits from an int8 copy calibrated on the first 8 batches: approximate, about
    #: 1.4x faster than ``jit`` on AVX2; maps exact) or ``off`` (eager).
    compile: str = "auto"

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
    """The optimisation recipe (docs/methods.md §2): SGD with step decay of the learning rate."""

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
    #: under ``torchrun``: normalise batch-norm layers over the global batch (SyncBatchNorm), not each rank's block.
    sync_batchnorm: bool = False
    #: report the loss terms every N steps (0 = never); with ``sync_free`` also where a NaN loss is noticed.
    log_every_steps: int = 50
    # -- speed levers (issue #19; ``auto`` = the choice expected to be faster, see mkdlab.engine.speed: on CUDA it
    # -- is unverified until ``python benchmarks/bench_gpu.py`` has run on a GPU) ----------------------------------
    #: torch.compile the step's model code (forward, loss, backward); ``auto`` = on CUDA, off on CPU.
    compile: Literal["auto", "on", "off"] = "auto"
    #: the torch.compile backend (``aot_eager``: the same graphs without code generation, bit-exact on CPU).
    compile_backend: str = "inductor"
    #: replay the whole step (teachers, student forward and backward, SGD) as one CUDA graph; ``auto`` = on CUDA
    #: unless fp16 loss scaling is on. CUDA only.
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    #: SGD as one fused kernel (``on``) or PyTorch's default (``off``: foreach on CUDA, a loop on CPU); ``auto`` =
    #: fused on CUDA (on CPU it is not faster for these models and rounds differently).
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    #: no host synchronisation inside the step: NaN losses are noticed from a device flag every
    #: ``log_every_steps`` steps and at epoch ends, and the run rolls back to the state of that last check;
    #: ``auto`` = on CUDA (where a sync stalls the GPU), off on CPU (each step checked: no cost there).
    sync_free: Literal["auto", "on", "off"] = "auto"
    #: same-architecture teachers run one after another (``loop``) or as one vmapped call (``vmap``); ``auto`` =
    #: vmap on CUDA, loop on CPU.
    teacher_batching: Literal["auto", "loop", "vmap"] = "auto"


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
#: folders of ``mkdlab/configs`` whose files other configs build on, with what they are (they are not presets).
BUILDING_BLOCKS = {
    "base": "a base recipe that presets extend (extends: base/<name>)",
    "profiles": "a run profile's overlay (mkdlab.config.apply_profile)",
}
YAML_SUFFIXES = (".yaml", ".yml")


def merge_config_mappings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged on top of ``base``: the one merge of presets (``extends:``), profiles and studies.

    Mappings merge key by key, recursively; every other value of ``update`` (a scalar, ``None``, a list: lists are
    replaced, never concatenated) replaces what ``base`` holds under its key, and keys ``update`` lacks keep the
    value of ``base``. ``{"train": {"lr": 0.1}}`` on top of ``{"train": {"lr": 0.05, "epochs": 30}}`` changes the lr
    only; ``teachers: null`` removes an inherited teachers section. Neither argument is modified, and the result
    shares no mutable value with them.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config_mappings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def available_presets() -> list[str]:
    """Names of the YAML presets shipped in ``mkdlab/configs`` (not its ``base/`` and ``profiles/`` folders)."""
    return sorted(p.name[:-5] for p in _configs_dir().iterdir() if p.name.endswith(".yaml"))


def read_preset(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping of a preset name (``mkdlab/configs/<name>.yaml``) or a YAML file path, ``extends:`` resolved.

    ``extends:`` names what a file builds on: a preset name (``mmkd``, ``base/multi_teacher``), a YAML path relative
    to the extending file (``../shared.yaml``) or a list of them, merged left to right; each is resolved the same
    way, recursively (a cycle is an error that names it), and the file's own keys are merged on top with
    :func:`merge_config_mappings`. A preset that trains another method than its base extends a base recipe, not
    that method's preset, whose ``method.params`` would not fit.
    """
    return _read_resolved(_locate(name_or_path), ())


def read_profile(profile: Profile | str) -> dict[str, Any]:
    """The overlay of a run profile: ``mkdlab/configs/profiles/<profile>.yaml`` (``extends:`` resolved)."""
    try:
        profile = Profile(profile)
    except ValueError:
        raise ConfigError(f"no profile {str(profile)!r}; profiles: {', '.join(p.value for p in Profile)}") from None
    return _read_resolved(_configs_dir() / "profiles" / f"{profile.value}.yaml", ())


def apply_profile(data: Mapping[str, Any], profile: Profile | str) -> dict[str, Any]:
    """``data`` with the overlay of ``profile`` (smoke | quick | full) merged on top."""
    return merge_config_mappings(data, read_profile(profile))


def _configs_dir() -> Path:
    """The folder of the shipped configs, ``mkdlab/configs`` (a regular package, so a folder on disk)."""
    return Path(str(resources.files(PRESET_PACKAGE)))


def _packaged_name(path: Path) -> str | None:
    """The name of a file inside ``mkdlab/configs`` (``base/multi_teacher``); ``None`` for a file elsewhere."""
    try:
        return path.resolve().relative_to(_configs_dir().resolve()).with_suffix("").as_posix()
    except ValueError:
        return None


def _label(path: Path) -> str:
    """How messages name a config file: its preset name inside ``mkdlab/configs``, else its path."""
    return _packaged_name(path) or str(path)


def _locate(name_or_path: str | Path, extended_by: Path | None = None) -> Path:
    """The file of a preset name, or of a YAML path: relative to the file ``extended_by`` in its ``extends:``."""
    path = Path(name_or_path)
    if path.suffix in YAML_SUFFIXES:
        path = path if extended_by is None else extended_by.parent / path
    else:
        path = _configs_dir() / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    where = "" if extended_by is None else f"{_label(extended_by)}: extends {str(name_or_path)!r}: "
    raise ConfigError(f"{where}no preset or YAML file {str(name_or_path)!r}; presets: {', '.join(available_presets())}")


def _read_resolved(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The mapping in ``path`` on top of all it extends; ``chain``: the files that extend it, outermost first."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = [*chain[chain.index(resolved):], resolved]
        raise ConfigError(f"extends: a cycle, {' -> '.join(map(_label, cycle))}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_label(path)}: a config file must hold a mapping, got {type(data).__name__}")
    merged: dict[str, Any] = {}
    for base in _extends_list(data.pop("extends", []), path):
        merged = merge_config_mappings(merged, _read_resolved(_locate(base, path), (*chain, resolved)))
    return merge_config_mappings(merged, data)


def _extends_list(value: Any, path: Path) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"{_label(path)}: extends must be a preset name, a relative YAML path or a list of them, "
                          f"got {value!r}")
    return names


def _refuse_building_blocks(path: Path) -> None:
    """A clear error for a file of ``mkdlab/configs/base`` or ``profiles``: they complete presets, they are none."""
    name = _packaged_name(path) or ""
    folder = name.split("/")[0]
    if "/" in name and folder in BUILDING_BLOCKS:
        raise ConfigError(f"{name!r} is {BUILDING_BLOCKS[folder]}, not a preset; "
                          f"presets: {', '.join(available_presets())}")


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
    """Parse a preset (name, YAML path or mapping) with ``overrides`` into a typed config: every key and type is
    checked, and the values that need no registry (epochs, batch size, one architecture per teacher seed).

    A preset's ``extends:`` is resolved first (:func:`read_preset`); the overrides apply after every layer. Names
    of datasets, models and methods and the method's hyper-parameters are checked against the registries by
    :func:`mkdlab.experiment.load_experiment`, the composition root, which is what commands and notebooks call.
    """
    if preset is None:
        data: Mapping[str, Any] = {}
    elif isinstance(preset, Mapping):
        data = preset
    else:
        path = _locate(preset)
        _refuse_building_blocks(path)
        data = _read_resolved(path, ())
    config = from_dict(ExperimentConfig, apply_overrides(data, overrides))
    check_values(config)
    return config


def check_values(config: ExperimentConfig) -> None:
    """The checks of a config that need no registry: positive epochs and batch size, one architecture per seed."""
    if config.teachers is not None and isinstance(config.teachers.arch, list) \
            and len(config.teachers.arch) != len(config.teachers.seeds):
        raise ConfigError("teachers.arch: give one architecture, or one per entry of teachers.seeds")
    if config.train.epochs < 1:
        raise ConfigError("train.epochs must be at least 1")
    if config.data.batch_size < 1:
        raise ConfigError("data.batch_size must be at least 1")


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
    "apply_profile",
    "available_presets",
    "check_values",
    "dump_config",
    "load_config",
    "merge_config_mappings",
    "read_preset",
    "read_profile",
]
