"""The report of a study: mean ± std, the gains over the CE-only column and MMKD's ARI against hand-computed
values."""

from __future__ import annotations

import math

import pytest

from mkdlab.studies import (
    Reported,
    RunRecord,
    ari_against_baselines,
    average_relative_improvement,
    mean_std,
    summarize,
)


def record(label: str, seed: int, last: float, best: float, method: str | None = None) -> RunRecord:
    return RunRecord(label, method or label, seed, last, best, 3, 4, 10.0 + seed, 100.0 * (seed + 1))


def test_mean_std_and_ari_against_hand_computed_values():
    assert mean_std([70.0, 72.0, 74.0]) == (72.0, 2.0)
    mean, std = mean_std([1.0])
    assert mean == 1.0 and math.isnan(std)
    # (75.66 − 73.23) / (73.23 − 70.74) = 2.43 / 2.49 ; (69.70 − 68.42) / (68.42 − 65.64) = 1.28 / 2.78
    expected = 100 * (2.43 / 2.49 + 1.28 / 2.78) / 2
    assert average_relative_improvement([75.66, 69.70], [73.23, 68.42], [70.74, 65.64]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="undefined"):
        average_relative_improvement([75.0], [70.0], [70.0])


def test_summary_gains_and_ari_against_hand_computed_values():
    records = [record("ce", 0, 70.0, 71.0), record("ce", 1, 72.0, 73.0),
               record("aver_kd", 0, 74.0, 75.0, "aver_kd"), record("aver_kd", 1, 76.0, 77.0, "aver_kd"),
               record("mmkd", 0, 77.0, 78.0), record("mmkd", 1, 79.0, 80.0)]
    paper = {"ce": Reported(70.74, 0.4), "mmkd": Reported(75.66, 0.18)}
    summaries = {s.label: s for s in summarize(records, paper)}
    mmkd = summaries["mmkd"]
    assert (mmkd.seeds, mmkd.last_mean, mmkd.best_mean) == (2, 78.0, 79.0)
    assert mmkd.last_std == pytest.approx(math.sqrt(2)) and mmkd.gain_last == 7.0 and mmkd.gain_best == 7.0
    assert mmkd.paper_gain == pytest.approx(75.66 - 70.74) and summaries["aver_kd"].paper_gain is None
    assert mmkd.train_time_s == 10.5 and mmkd.images_per_s == 150.0
    # best means: mmkd 79, aver_kd 76, ce 72 → (79 − 76) / (76 − 72) = 75 %
    assert ari_against_baselines(list(summaries.values())) == {"aver_kd": pytest.approx(75.0)}
