"""Run records: the outcome of one (column, seed) run, kept as ``result.json`` beside the run.

A run directory with a ``result.json`` is finished: the runner skips it, and the report and the figures read it
back without training.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkdlab.storage import save_atomic_text
from mkdlab.studies.spec import Column, StudyRow

RESULT_FILE = "result.json"


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


def write_record(record: RunRecord, run_dir: str | Path) -> Path:
    """Write ``record`` as ``run_dir/result.json`` (atomically: a crash leaves no half-written record)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return save_atomic_text(json.dumps(dataclasses.asdict(record), indent=2), Path(run_dir) / RESULT_FILE)


def read_record(path: str | Path) -> RunRecord:
    """A :class:`RunRecord` from a ``result.json``."""
    return RunRecord(**json.loads(Path(path).read_text()))


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` finished (left its ``result.json``)."""
    return (Path(run_dir) / RESULT_FILE).exists()


def read_records(out: str | Path, row: StudyRow) -> list[RunRecord]:
    """Every finished run of ``row`` under ``out``, in column order (e.g. to report without training)."""
    folder = Path(out) / row.name
    return [read_record(path) for column in row.columns
            for path in sorted(folder.glob(f"{column.label}/seed*/{RESULT_FILE}"))]


def in_column_order(row: StudyRow, records: Sequence[RunRecord]) -> list[RunRecord]:
    """``records`` sorted by the row's column order, then by seed (runs may finish in any order)."""
    order = {column.label: i for i, column in enumerate(row.columns)}
    return sorted(records, key=lambda r: (order.get(r.label, len(order)), r.seed))
