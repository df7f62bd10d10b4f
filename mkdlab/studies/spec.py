"""Study rows: what a study file holds, loaded and validated, and the experiment of each (column, seed) run.

A study file (``mkdlab/studies/<file>.yaml``) holds a shared ``recipe`` (an :class:`~mkdlab.config.ExperimentConfig`
mapping without the method), the method ``columns`` (a label → a method preset, or a method name with
hyper-parameters) and named ``rows``: one teacher/student combination each (its own ``recipe`` additions and,
optionally, its own ``columns`` or ``column_params`` changes to the shared ones), with the paper's reported numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mkdlab.config import (
    ExperimentConfig,
    MethodConfig,
    apply_overrides,
    load_config,
    merge_config_mappings,
    read_preset,
)
from mkdlab.experiment import validate, with_method
from mkdlab.typed import ConfigError

STUDY_PACKAGE = "mkdlab.studies"


@dataclass(frozen=True)
class Reported:
    """A number as a paper reports it: a mean and, when given, a standard deviation (top-1 in %)."""

    mean: float
    std: float | None = None

    @classmethod
    def parse(cls, text: str | float) -> Reported:
        """``"74.08±0.09"``, ``"74.08+-0.09"`` or ``74.08``."""
        if isinstance(text, int | float):
            return cls(float(text))
        for separator in ("±", "+-"):
            if separator in text:
                mean, std = text.split(separator)
                return cls(float(mean), float(std))
        return cls(float(text))

    def __str__(self) -> str:
        return f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")


@dataclass(frozen=True)
class Column:
    """One method of a study: its label in the tables, the method and its hyper-parameters.

    ``teacher`` is the index (in the row's teacher list) of the teacher a single-teacher method learns from.
    """

    label: str
    method: MethodConfig
    teacher: int = 0


@dataclass
class StudyRow:
    """One teacher/student combination: the experiment every column shares, and what the paper reported."""

    name: str
    source: str
    base: ExperimentConfig
    columns: list[Column]
    paper: dict[str, Reported] = field(default_factory=dict)

    def column(self, label: str) -> Column:
        """The column called ``label``; an unknown label lists the valid ones."""
        for column in self.columns:
            if column.label == label:
                return column
        raise ConfigError(f"study {self.name!r} has no column {label!r}; columns: "
                          f"{', '.join(c.label for c in self.columns)}")


# -- study files -----------------------------------------------------------------------------------------------------
def _study_files() -> list[Any]:
    return sorted((p for p in resources.files(STUDY_PACKAGE).iterdir() if p.name.endswith(".yaml")),
                  key=lambda p: p.name)


def _read_study_files() -> dict[str, tuple[str, dict[str, Any]]]:
    """Row name → (the file it is in, that file's content); a name defined twice is an error."""
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in _study_files():
        data = yaml.safe_load(path.read_text())
        for name in data.get("rows", {}):
            if name in rows:
                raise ConfigError(f"study row {name!r} is defined in {rows[name][0]} and {path.name}")
            rows[name] = (path.name, data)
    return rows


def available_studies() -> list[str]:
    """Every study row name shipped in ``mkdlab/studies``."""
    return sorted(_read_study_files())


def load_study(name: str, overrides: Iterable[str] = ()) -> StudyRow:
    """The study row ``name``; ``overrides`` (``train.epochs=2``) apply to its experiment as in ``train``."""
    files = _read_study_files()
    if name not in files:
        raise ConfigError(f"no study row {name!r}; rows: {', '.join(sorted(files))}")
    file_name, data = files[name]
    row = data["rows"][name]
    unknown = set(row) - {"student", "teachers", "recipe", "columns", "column_params", "paper"}
    if unknown:
        raise ConfigError(f"study row {name!r} ({file_name}): unknown keys {sorted(unknown)}; "
                          f"use student, teachers, recipe, columns, column_params, paper")
    mapping = merge_config_mappings(data.get("recipe", {}), row.get("recipe", {}))
    mapping = merge_config_mappings(mapping, {"name": name, "student": row["student"],
                                    **({"teachers": row["teachers"]} if "teachers" in row else {})})
    mapping = apply_overrides(mapping, overrides)
    specs = dict(row.get("columns") or data["columns"])
    for label, params in (row.get("column_params") or {}).items():  # the row's changes to a shared column
        if label not in specs:
            raise ConfigError(f"study row {name!r} ({file_name}): column_params for unknown column {label!r}")
        specs[label] = {**specs[label], "params": merge_config_mappings(specs[label].get("params") or {}, params)}
    columns = [_column(label, spec, file_name) for label, spec in specs.items()]
    study = StudyRow(name, data.get("source", file_name), load_config(mapping), columns)
    for column in columns:  # every column must validate against this row's teachers and student
        validate(run_config(study, column, 0, Path()))
    paper = {label: Reported.parse(value) for label, value in (row.get("paper") or {}).items()}
    stray = set(paper) - {c.label for c in columns} - {"teachers", "ensemble"}
    if stray:
        raise ConfigError(f"study row {name!r} ({file_name}): paper numbers for unknown columns {sorted(stray)}")
    study.paper = paper
    return study


def _column(label: str, spec: Mapping[str, Any], file_name: str) -> Column:
    """A column from ``{preset: name}`` (the method section of a preset) or ``{method: name, params: {...}}``."""
    unknown = set(spec) - {"preset", "method", "params", "teacher"}
    if unknown:
        raise ConfigError(f"{file_name}: column {label!r}: unknown keys {sorted(unknown)}; "
                          f"use preset or method, params, teacher")
    teacher = int(spec.get("teacher", 0))
    if "preset" in spec:
        method = read_preset(spec["preset"]).get("method", {})
        params = merge_config_mappings(method.get("params") or {}, spec.get("params") or {})
        return Column(label, MethodConfig(method["name"], params), teacher)
    if "method" in spec:
        return Column(label, MethodConfig(spec["method"], dict(spec.get("params") or {})), teacher)
    raise ConfigError(f"{file_name}: column {label!r} needs 'preset: <name>' or 'method: <name>'")


# -- the runs of a row -----------------------------------------------------------------------------------------------
def run_config(row: StudyRow, column: Column, seed: int, out: Path) -> ExperimentConfig:
    """The experiment of one (column, seed): the row's base with that method, student seed and run directory.

    The teachers stay those of the row (their own seeds): only the student's initialisation and data order change
    with ``seed``, as in the papers' "three trials". Which teachers the method gets is
    :func:`~mkdlab.experiment.teachers_for`'s rule: a single-teacher method the row's teacher number
    ``column.teacher``, a method without teachers none.
    """
    try:
        config = with_method(row.base, column.method.name, params=column.method.params, teacher=column.teacher,
                             name=f"{column.label}/seed{seed}")
    except ConfigError as err:
        raise ConfigError(f"study {row.name!r}, column {column.label!r}: {err}") from None
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed),
                               output=dataclasses.replace(config.output, dir=str(out / row.name)))


def run_dir(out: str | Path, row: StudyRow, label: str, seed: int) -> Path:
    """Where the run of column ``label`` with student seed ``seed`` lives."""
    return run_config(row, row.column(label), seed, Path(out)).run_dir()
