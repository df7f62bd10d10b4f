"""The report of a study: mean ± std over seeds, gains over the CE-only student, MMKD's ARI, as CSV and Markdown.

:func:`summarize` turns the records into mean ± std of the last-epoch and best-epoch top-1, the gain over the
CE-only student and the paper's numbers; :func:`write_report` writes them as ``results.csv`` and ``results.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mkdlab.config import ExperimentConfig
from mkdlab.studies.records import RunRecord, in_column_order
from mkdlab.studies.spec import Reported, StudyRow

#: the column every gain is measured against, and the method ARI is computed for.
BASELINE, ARI_METHOD = "ce", "mmkd"


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


def _teachers_text(config: ExperimentConfig) -> str:
    if config.teachers is None:
        return "none"
    return ", ".join(f"{arch} (seed {seed})" for arch, seed in
                     zip(config.teachers.architectures(), config.teachers.seeds, strict=True))
