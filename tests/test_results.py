"""The committed results (README's table, figures/compare_fmnist/) are derived from the committed run records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mkdlab.studies import RunRecord, load_study, summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "figures" / "compare_fmnist"


def records() -> list[tuple[RunRecord, list[float]]]:
    rows = [json.loads(line) for line in (RESULTS / "runs.jsonl").read_text().splitlines()]
    return [(RunRecord(**{k: v for k, v in row.items() if k != "test_top1_per_epoch"}), row["test_top1_per_epoch"])
            for row in rows]


def test_every_column_of_the_row_ran_with_three_seeds_to_the_end():
    row = load_study("compare_fmnist")
    runs = records()
    assert sorted((r.label, r.seed) for r, _ in runs) == sorted((c.label, s) for c in row.columns for s in (0, 1, 2))
    for record, curve in runs:
        assert record.epochs == row.base.train.epochs == len(curve)
        assert record.last_top1 == curve[-1] and record.best_top1 == max(curve)


def test_the_report_and_the_readme_table_are_the_summary_of_the_records():
    summaries = summarize([r for r, _ in records()])
    written = {row["label"]: row for row in csv.DictReader((RESULTS / "results.csv").open())}
    readme = (ROOT / "README.md").read_text()
    for s in summaries:
        assert float(written[s.label]["best_mean"]) == pytest.approx(s.best_mean)
        assert float(written[s.label]["best_std"]) == pytest.approx(s.best_std)
        assert float(written[s.label]["gain_best"]) == pytest.approx(s.gain_best)
        assert f"| {s.label} | {s.best_mean:.2f} ± {s.best_std:.2f} | {s.gain_best:+.2f} |" in readme


def test_the_committed_figures_exist():
    for name in ("accuracy", "weights", "gradcam", "cost"):
        assert (ROOT / "figures" / f"compare_fmnist_{name}.png").stat().st_size > 10_000


def test_the_cpu_rerun_of_the_changed_columns_in_the_readme_is_its_records():
    """The one-seed ``compare_fmnist_mini`` rows of the README (the columns #14 changed, with CE and AVER-KD) are
    the committed records of figures/compare_fmnist_mini/."""
    mini = ROOT / "figures" / "compare_fmnist_mini"
    rows = [json.loads(line) for line in (mini / "runs.jsonl").read_text().splitlines()]
    readme = (ROOT / "README.md").read_text()
    row = load_study("compare_fmnist_mini")
    summaries = summarize([RunRecord(**{k: v for k, v in r.items() if k != "test_top1_per_epoch"}) for r in rows])
    assert {s.label for s in summaries} == {"ce", "aver_kd", "amtml_kd", "de_mkd", "jcs_mkd", "mmkd"}
    for record in rows:
        assert record["epochs"] == row.base.train.epochs == len(record["test_top1_per_epoch"])
        assert record["best_top1"] == max(record["test_top1_per_epoch"])
    for s in summaries:
        assert f"| {s.label} | {s.best_mean:.2f} | {s.gain_best:+.2f} |" in readme
