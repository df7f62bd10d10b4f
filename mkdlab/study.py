"""Studies: several methods × several seeds on the same teachers, student and data, and their report.

A study file (``mkdlab/studies/<file>.yaml``) holds a shared ``recipe`` (an :class:`~mkdlab.config.ExperimentConfig`
mapping without the method), the method ``columns`` (a label → a method preset, or a method name with
hyper-parameters) and named ``rows``: one teacher/student combination each (its own ``recipe`` additions and,
optionally, its own ``columns`` or ``column_params`` changes to the shared ones), with the paper's reported numbers.
A row is what ``python -m mkdlab reproduce <row> --seeds 0 1 2`` runs: every column, every seed, the teachers taken from
(or trained into) the teacher pool once and shared by all runs.

:func:`run_study` writes ``result.json`` beside each finished run, so running the same study again skips what is
done and resumes an interrupted run from its checkpoint. :func:`summarize` turns the records into mean ± std of the
last-epoch and best-epoch top-1, the gain over the CE-only student and MMKD's average relative improvement (ARI),
and :func:`write_report` writes them as CSV and Markdown.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from mkdlab.config import (
    ExperimentConfig,
    MethodConfig,
    TeachersConfig,
    apply_overrides,
    load_config,
    read_preset,
    validate,
)
from mkdlab.storage import save_atomic_text
from mkdlab.typed import ConfigError

STUDY_PACKAGE = "mkdlab.studies"
RESULT_FILE = "result.json"
#: the column every gain is measured against, and the method ARI is computed for.
BASELINE, ARI_METHOD = "ce", "mmkd"


class StudyRunError(RuntimeError):
    """Runs of a parallel study failed (the others finished; running the study again resumes the failed ones)."""


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


@dataclass(frozen=True)
class RunRecord:
    """The outcome of one (column, seed) run, as stored in its ``result.json``."""

    label: str
    method: str
    seed: int
    last_top1: float
    best_top1: float
    best_epoch: int
    epochs: int
    train_time_s: float
    images_per_s: float


@dataclass(frozen=True)
class ColumnSummary:
    """Mean ± std over seeds of one column, its gain over the CE-only student and the paper's number."""

    label: str
    method: str
    seeds: int
    last_mean: float
    last_std: float
    best_mean: float
    best_std: float
    gain_last: float
    gain_best: float
    train_time_s: float
    images_per_s: float
    paper: Reported | None
    paper_gain: float | None


# -- study files -----------------------------------------------------------------------------------------------------
def _study_files() -> list[Any]:
    return sorted((p for p in resources.files(STUDY_PACKAGE).iterdir() if p.name.endswith(".yaml")),
                  key=lambda p: p.name)


def _read_study_files() -> dict[str, tuple[str, dict[str, Any]]]:
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
    mapping = _deep_merge(data.get("recipe", {}), row.get("recipe", {}))
    mapping = _deep_merge(mapping, {"name": name, "student": row["student"],
                                    **({"teachers": row["teachers"]} if "teachers" in row else {})})
    mapping = apply_overrides(mapping, overrides)
    specs = dict(row.get("columns") or data["columns"])
    for label, params in (row.get("column_params") or {}).items():  # the row's changes to a shared column
        if label not in specs:
            raise ConfigError(f"study row {name!r} ({file_name}): column_params for unknown column {label!r}")
        specs[label] = {**specs[label], "params": _deep_merge(specs[label].get("params") or {}, params)}
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
        params = _deep_merge(method.get("params") or {}, spec.get("params") or {})
        return Column(label, MethodConfig(method["name"], params), teacher)
    if "method" in spec:
        return Column(label, MethodConfig(spec["method"], dict(spec.get("params") or {})), teacher)
    raise ConfigError(f"{file_name}: column {label!r} needs 'preset: <name>' or 'method: <name>'")


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- running ---------------------------------------------------------------------------------------------------------
def run_config(row: StudyRow, column: Column, seed: int, out: Path) -> ExperimentConfig:
    """The experiment of one (column, seed): the row's base with that method, student seed and run directory.

    The teachers stay those of the row (their own seeds): only the student's initialisation and data order change
    with ``seed``, as in the papers' "three trials". A single-teacher method gets the row's teacher number
    ``column.teacher``; a method without teachers gets none.
    """
    base = row.base
    required = _method_class(column.method.name).teachers_required
    if required == "none":
        base = dataclasses.replace(base, teachers=None)
    elif required == "one" and base.teachers is not None:
        base = dataclasses.replace(base, teachers=_one_teacher(base.teachers, column))
    return dataclasses.replace(
        base, name=f"{column.label}/seed{seed}", method=column.method,
        train=dataclasses.replace(base.train, seed=seed),
        output=dataclasses.replace(base.output, dir=str(out / row.name)),
    )


def _one_teacher(teachers: TeachersConfig, column: Column) -> TeachersConfig:
    count = len(teachers.entries or teachers.seeds)
    if not 0 <= column.teacher < count:
        raise ConfigError(f"column {column.label!r}: teacher {column.teacher} does not exist (the row has {count})")
    if teachers.entries:
        return dataclasses.replace(teachers, entries=[teachers.entries[column.teacher]])
    return dataclasses.replace(teachers, arch=[teachers.architectures()[column.teacher]],
                               seeds=[teachers.seeds[column.teacher]])


def _method_class(name: str) -> Any:
    from mkdlab.methods.registry import get_method

    return get_method(name)


def run_study(row: StudyRow, seeds: Sequence[int], *, out: str | Path = "runs/studies",
              labels: Sequence[str] | None = None, pool: Any = None, verbose: bool = True,
              record_extras: bool = False, jobs: int = 1) -> list[RunRecord]:
    """Run every column (or ``labels``) with every seed; finished runs are read back, interrupted ones resumed.

    With ``record_extras`` each run also keeps its per-sample extras (teacher weights …) under ``extras/``.
    With ``jobs`` > 1 the runs go to that many worker processes (small models leave a GPU, or the cores of a CPU,
    mostly idle in one process): the missing teachers are trained first, in parallel, then every pending run;
    each worker gets ``cpu_count // jobs`` threads. Records come back in column × seed order either way.
    """
    from mkdlab.data import resolve_root

    resolve_root(row.base.data.dataset, row.base.data.root, download=row.base.data.download)  # fail before training
    columns = [row.column(label) for label in labels] if labels else row.columns
    runs = [(column, seed, run_config(row, column, seed, Path(out))) for column in columns for seed in seeds]
    pending = [run for run in runs if not (run[2].run_dir() / RESULT_FILE).exists()]
    if jobs > 1 and pending:
        _run_in_parallel(pending, jobs, pool, record_extras, verbose)
    else:
        for column, seed, config in pending:
            _run_and_record(column, seed, config, pool, record_extras, verbose)
    return [read_record(config.run_dir() / RESULT_FILE) for _, _, config in runs]


def _run_and_record(column: Column, seed: int, config: ExperimentConfig, pool: Any, record_extras: bool,
                    verbose: bool) -> RunRecord:
    """Train one (column, seed) run (resuming it if interrupted) and write its ``result.json``."""
    from mkdlab.experiment import run_experiment

    result, _ = run_experiment(config, pool=pool, resume=True, verbose=verbose, record_extras=record_extras)
    record = record_from_history(column, seed, result.history)
    config.run_dir().mkdir(parents=True, exist_ok=True)
    save_atomic_text(json.dumps(dataclasses.asdict(record), indent=2), config.run_dir() / RESULT_FILE)
    return record


def _train_teacher(config: ExperimentConfig, pool: Any) -> None:
    """Train the one teacher of ``config`` into the pool (without sending the model back to the parent)."""
    from mkdlab.experiment import load_teachers

    load_teachers(config, pool, verbose=False)


def _teacher_jobs(configs: Iterable[ExperimentConfig], pool: Any) -> dict[str, ExperimentConfig]:
    """Pool name → a single-teacher config, for each distinct teacher the runs need that the pool does not hold."""
    from mkdlab.teachers import TeacherPool, entry_name

    pool = pool or TeacherPool()
    wanted: dict[str, ExperimentConfig] = {}
    for config in configs:
        teachers = config.teachers
        if teachers is None or teachers.entries:
            continue
        for arch, seed in zip(teachers.architectures(), teachers.seeds, strict=True):
            name = entry_name(arch, config.data.dataset, seed, teachers.epochs, teachers.max_steps)
            if name not in pool and name not in wanted:
                wanted[name] = dataclasses.replace(config, teachers=dataclasses.replace(
                    teachers, arch=[arch], seeds=[seed]))
    return wanted


def _run_in_parallel(pending: Sequence[tuple[Column, int, ExperimentConfig]], jobs: int, pool: Any,
                     record_extras: bool, verbose: bool) -> None:
    """The pending runs on ``jobs`` worker processes, after the teachers they share (also in parallel).

    A failed run does not stop the others; the failures are reported together at the end, and running the same
    study again resumes them.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as executor:
        teachers = _teacher_jobs((config for _, _, config in pending), pool)
        futures = {executor.submit(_train_teacher, config, pool): f"teacher {name}"
                   for name, config in teachers.items()}
        _collect(futures, failures, verbose)
        if failures:
            raise StudyRunError(f"training the teachers failed: {'; '.join(failures)}")
        futures = {executor.submit(_run_and_record, column, seed, config, pool, record_extras, False):
                   f"{column.label} seed {seed}" for column, seed, config in pending}
        _collect(futures, failures, verbose)
    if failures:
        raise StudyRunError(f"{len(failures)} of {len(pending)} runs failed: {'; '.join(failures)}. The others are "
                           "finished; run the same study again to resume the failed ones")


def _collect(futures: Mapping[Any, str], failures: list[str], verbose: bool) -> None:
    """Wait for ``futures`` (future → what it runs), printing each outcome; failures are appended, not raised."""
    from concurrent.futures import as_completed

    for done, future in enumerate(as_completed(futures), 1):
        what = futures[future]
        try:
            record = future.result()
        except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
            failures.append(f"{what}: {type(err).__name__}: {err}")
            print(f"[{done}/{len(futures)}] {what} FAILED: {err}", flush=True)
            continue
        if verbose:
            detail = (f": best {record.best_top1:.2f} (epoch {record.best_epoch}), last {record.last_top1:.2f}, "
                      f"{record.train_time_s:.0f} s" if isinstance(record, RunRecord) else ": done")
            print(f"[{done}/{len(futures)}] {what}{detail}", flush=True)


def record_from_history(column: Column, seed: int, history: Sequence[Mapping[str, Any]]) -> RunRecord:
    """A run's record from its per-epoch history (what ``history.jsonl`` holds)."""
    evaluated = [h for h in history if "test_top1" in h]
    if not evaluated:
        raise ValueError(f"run {column.label}/seed{seed} has no evaluated epoch")
    best = max(evaluated, key=lambda h: h["test_top1"])
    train_time = sum(h["epoch_time_s"] for h in history)
    images = sum(h["images_per_s"] * h["epoch_time_s"] for h in history)
    return RunRecord(column.label, column.method.name, seed, evaluated[-1]["test_top1"], best["test_top1"],
                     best["epoch"], history[-1]["epoch"], train_time, images / max(train_time, 1e-9))


def read_record(path: str | Path) -> RunRecord:
    """A :class:`RunRecord` from a ``result.json``."""
    return RunRecord(**json.loads(Path(path).read_text()))


def run_dir(out: str | Path, row: StudyRow, label: str, seed: int) -> Path:
    """Where the run of column ``label`` with student seed ``seed`` lives."""
    return run_config(row, row.column(label), seed, Path(out)).run_dir()


def read_records(out: str | Path, row: StudyRow) -> list[RunRecord]:
    """Every finished run of ``row`` under ``out``, in column order (e.g. to report without training)."""
    folder = Path(out) / row.name
    return [read_record(path) for column in row.columns
            for path in sorted(folder.glob(f"{column.label}/seed*/{RESULT_FILE}"))]


# -- the report ------------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; NaN for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def average_relative_improvement(ours: Sequence[float], baseline: Sequence[float], student: Sequence[float]) -> float:
    r"""MMKD's ARI (its Table I footnote), in %, over :math:`M` teacher-student combinations:

    .. math:: \mathrm{ARI} = \frac1M\sum_{i=1}^M \frac{Acc^i_{MMKD} - Acc^i_{BKD}}{Acc^i_{BKD} - Acc^i_{Stu}}\times 100

    with the baseline KD method's and the CE-only student's accuracies. Undefined (an error) when a baseline did not
    improve on the student at all.
    """
    if not (len(ours) == len(baseline) == len(student)) or not ours:
        raise ValueError("ARI needs one accuracy of each kind per combination")
    terms = []
    for o, b, s in zip(ours, baseline, student, strict=True):
        if b == s:
            raise ValueError(f"ARI is undefined: the baseline ({b}) equals the CE-only student ({s})")
        terms.append((o - b) / (b - s))
    return 100.0 * statistics.fmean(terms)


def summarize(records: Sequence[RunRecord], paper: Mapping[str, Reported] | None = None) -> list[ColumnSummary]:
    """Per column (in first-seen order): mean ± std over seeds, gains over the ``ce`` column, the paper's numbers."""
    paper = paper or {}
    by_label: dict[str, list[RunRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    ce = by_label.get(BASELINE)
    ce_last = mean_std([r.last_top1 for r in ce])[0] if ce else math.nan
    ce_best = mean_std([r.best_top1 for r in ce])[0] if ce else math.nan
    paper_ce = paper.get(BASELINE)
    summaries = []
    for label, runs in by_label.items():
        last_mean, last_std = mean_std([r.last_top1 for r in runs])
        best_mean, best_std = mean_std([r.best_top1 for r in runs])
        reported = paper.get(label)
        paper_gain = reported.mean - paper_ce.mean if reported is not None and paper_ce is not None else None
        summaries.append(ColumnSummary(
            label, runs[0].method, len(runs), last_mean, last_std, best_mean, best_std, last_mean - ce_last,
            best_mean - ce_best, statistics.fmean(r.train_time_s for r in runs),
            statistics.fmean(r.images_per_s for r in runs), reported, paper_gain))
    return summaries


def ari_against_baselines(summaries: Sequence[ColumnSummary], metric: str = "best_mean") -> dict[str, float]:
    """MMKD's ARI against every other distillation column of one study (M = 1), from the ``metric`` means."""
    by_label = {s.label: s for s in summaries}
    if ARI_METHOD not in by_label or BASELINE not in by_label:
        return {}
    ours, student = getattr(by_label[ARI_METHOD], metric), getattr(by_label[BASELINE], metric)
    result = {}
    for label, summary in by_label.items():
        if label in (ARI_METHOD, BASELINE):
            continue
        baseline = getattr(summary, metric)
        result[label] = average_relative_improvement([ours], [baseline], [student]) if baseline != student else math.nan
    return result


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.2f}"


def markdown_table(summaries: Sequence[ColumnSummary]) -> str:
    """The results as a Markdown table (top-1 in %, gains in points over the CE-only student)."""
    lines = ["| method | seeds | last top-1 | best top-1 | gain (last) | gain (best) | paper | paper gain | "
             "train s/run | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s.label} | {s.seeds} | {_pm(s.last_mean, s.last_std)} | {_pm(s.best_mean, s.best_std)} | "
            f"{_signed(s.gain_last)} | {_signed(s.gain_best)} | {s.paper if s.paper else '—'} | "
            f"{_signed(s.paper_gain)} | {s.train_time_s:.0f} | {s.images_per_s:.0f} |")
    return "\n".join(lines)


def write_report(row: StudyRow, records: Sequence[RunRecord], out: str | Path = "runs/studies",
                 header: str = "") -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` for ``row`` under ``out/<row>`` (columns in the row's order);
    returns their paths."""
    summaries = summarize(in_column_order(row, records), row.paper)
    folder = Path(out) / row.name
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / "results.csv", folder / "results.md"
    fields = [f.name for f in dataclasses.fields(ColumnSummary)]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for s in summaries:
            writer.writerow({**dataclasses.asdict(s), "paper": str(s.paper) if s.paper else ""})
    parts = [f"# {row.name}", "", f"Source: {row.source}. Student {row.base.student}; teachers "
             f"{_teachers_text(row.base)}; {row.base.data.dataset}, {row.base.train.epochs} epochs.", ""]
    if header:
        parts += [header, ""]
    parts.append(markdown_table(summaries))
    ari = ari_against_baselines(summaries)
    if ari:
        parts += ["", "MMKD's average relative improvement (best-epoch means, M = 1): "
                  + ", ".join(f"{label} {value:+.1f} %" for label, value in ari.items())]
    md_path.write_text("\n".join(parts) + "\n")
    return csv_path, md_path


def in_column_order(row: StudyRow, records: Sequence[RunRecord]) -> list[RunRecord]:
    """``records`` sorted by the row's column order, then by seed (runs may finish in any order)."""
    order = {column.label: i for i, column in enumerate(row.columns)}
    return sorted(records, key=lambda r: (order.get(r.label, len(order)), r.seed))


def _teachers_text(config: ExperimentConfig) -> str:
    if config.teachers is None:
        return "none"
    return ", ".join(f"{arch} (seed {seed})" for arch, seed in
                     zip(config.teachers.architectures(), config.teachers.seeds, strict=True))
