"""Studies: every shipped row validates; the runner skips finished runs and resumes interrupted ones; the report's
statistics and MMKD's ARI against hand-computed values."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import mkdlab.engine.trainer as trainer_module
from mkdlab.config import MethodConfig, load_config
from mkdlab.studies import (
    Column,
    Reported,
    RunRecord,
    StudyRow,
    ari_against_baselines,
    available_studies,
    average_relative_improvement,
    load_study,
    mean_std,
    read_records,
    run_config,
    run_study,
    summarize,
    write_report,
)
from mkdlab.typed import ConfigError


@pytest.mark.parametrize("name", available_studies())
def test_every_study_row_loads_and_validates(name):
    row = load_study(name)
    assert row.columns and row.columns[0].label == "ce"
    assert set(row.paper) <= {c.label for c in row.columns} | {"teachers", "ensemble"}


def test_paper_rows_record_the_reported_numbers():
    row = load_study("mmkd_t1_resnet32x4_vgg8")
    assert row.paper["mmkd"] == Reported(75.66, 0.18) and row.paper["ensemble"] == Reported(81.16)
    assert row.base.data.dataset == "cifar100" and row.base.train.nesterov and row.base.train.epochs == 240
    mobile = load_study("mmkd_t1_resnet32x4_mobilenetv2")
    assert mobile.base.train.lr == 0.01 and mobile.base.teachers.arch == "resnet32x4"
    mixed = load_study("mmkd_t4_vgg11_vgg13_resnet32x4_vgg8")
    assert mixed.base.teachers.architectures() == ["vgg11", "vgg13", "resnet32x4"]
    ablation = load_study("demkd_ablation_resnet32x4_vgg8")
    assert [c.label for c in ablation.columns] == ["ce", "ablation_b", "ablation_c", "ablation_d"]
    assert ablation.column("ablation_c").method.params["dkd_warmup_epochs"] == 20


def test_run_configs_give_each_method_the_teachers_it_takes():
    row = load_study("compare_fmnist_mini")
    tmp = Path("out")
    kd = run_config(row, row.column("kd"), 2, tmp)
    assert kd.teachers.architectures() == ["resnet20"] and kd.teachers.seeds == [0]
    assert kd.train.seed == 2 and kd.run_dir() == tmp / "compare_fmnist_mini" / "kd" / "seed2"
    assert run_config(row, row.column("ce"), 0, tmp).teachers is None
    assert run_config(row, row.column("ca_mkd"), 0, tmp).teachers.seeds == [0, 1, 2]


def test_bad_study_input_says_what_to_do():
    with pytest.raises(ConfigError, match="no study row 'nope'; rows: .*compare_fmnist_mini"):
        load_study("nope")
    with pytest.raises(ConfigError, match="has no column 'dtskd2'"):
        load_study("compare_fmnist_mini").column("dtskd2")
    with pytest.raises(ConfigError, match="train.epoch: unknown key; valid keys of train: epochs"):
        load_study("compare_fmnist_mini", ["train.epoch=3"])


def test_reported_numbers_parse():
    assert Reported.parse("74.08±0.09") == Reported(74.08, 0.09)
    assert Reported.parse("74.08+-0.09") == Reported(74.08, 0.09)
    assert Reported.parse(81.16) == Reported(81.16) and str(Reported(1.0, 0.5)) == "1.00 ± 0.50"


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


def tiny_row(tmp_path) -> StudyRow:
    base = load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                        "train": {"epochs": 2, "max_steps": 6, "device": "cpu", "log_every_steps": 0}})
    return StudyRow("tiny", "test", base, [Column("ce", MethodConfig("ce"))], {"ce": Reported(80.0, 1.0)})


def test_runner_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    row = tiny_row(tmp_path)
    reference = run_study(row, [0], out=tmp_path / "reference", verbose=False)[0]

    original_step = trainer_module.Trainer._step

    def step_then_stop(self, batch):  # a kill in the middle of the first epoch (a checkpoint is written)
        output = original_step(self, batch)
        if self.global_step == 1:
            self.request_stop()
        return output

    monkeypatch.setattr(trainer_module.Trainer, "_step", step_then_stop)
    with pytest.raises(trainer_module.TrainingInterrupted):
        run_study(row, [0], out=tmp_path / "study", verbose=False)
    monkeypatch.setattr(trainer_module.Trainer, "_step", original_step)
    assert not read_records(tmp_path / "study", row)
    resumed = run_study(row, [0], out=tmp_path / "study", verbose=False)[0]
    assert (resumed.last_top1, resumed.best_top1, resumed.best_epoch) == (
        reference.last_top1, reference.best_top1, reference.best_epoch)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mkdlab.experiment.run_experiment", must_not_train)
    assert run_study(row, [0], out=tmp_path / "study", verbose=False) == [resumed]

    csv_path, md_path = write_report(row, [resumed], tmp_path / "study")
    text = md_path.read_text()
    assert f"| ce | 1 | {resumed.last_top1:.2f} | {resumed.best_top1:.2f} | +0.00 | +0.00 | 80.00 ± 1.00 |" in text
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["label"] == "ce" and float(rows[0]["best_mean"]) == pytest.approx(resumed.best_top1)


def tiny_row_with_teachers(methods: list[str], steps: int) -> StudyRow:
    """A study row of ``methods`` on two 3-step resnet8 teachers and a ``steps``-step resnet8 student (CPU)."""
    base = load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                        "teachers": {"arch": "resnet8", "seeds": [0, 1], "epochs": 1, "max_steps": 3},
                        "train": {"epochs": 1, "max_steps": steps, "device": "cpu", "log_every_steps": 0}})
    return StudyRow("tiny", "test", base, [Column(m, MethodConfig(m)) for m in methods])


def test_parallel_runner_trains_each_teacher_once_and_matches_the_sequential_runs(tmp_path, monkeypatch):
    import torch

    from mkdlab.teachers import TeacherPool

    row = tiny_row_with_teachers(["ce", "kd", "aver_kd"], steps=4)
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # one thread per worker, as below for the sequential runs
    parallel = run_study(row, [0, 1], out=tmp_path / "parallel", pool=TeacherPool(tmp_path / "pool"),
                         verbose=False, jobs=2)
    pool = TeacherPool(tmp_path / "pool")
    assert sorted(pool.entries()) == ["resnet8-fashion_mnist_mini-s0-e1-m3", "resnet8-fashion_mnist_mini-s1-e1-m3"]
    files = {name: entry.sha256 for name, entry in pool.entries().items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = run_study(row, [0, 1], out=tmp_path / "sequential", pool=pool, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert [(r.label, r.seed) for r in parallel] == [(c, s) for c in ("ce", "kd", "aver_kd") for s in (0, 1)]
    assert [(r.last_top1, r.best_top1) for r in parallel] == [(r.last_top1, r.best_top1) for r in sequential]
    assert {name: entry.sha256 for name, entry in pool.entries().items()} == files  # nothing retrained
    assert len({r.best_top1 for r in parallel}) > 1  # the runs differ: not one result copied


def test_a_row_changes_a_shared_column_through_column_params(monkeypatch):
    assert load_study("compare_fmnist").column("mmkd").method.params["gram_size"] == 128
    assert load_study("compare_fmnist_mini").column("mmkd").method.params.get("gram_size", 64) == 64

    import mkdlab.studies.spec as study_module

    files = {"broken": ("test.yaml", {"recipe": {}, "columns": {"ce": {"preset": "ce"}},
                                      "rows": {"broken": {"student": "resnet8", "column_params": {"kd": {}}}}})}
    monkeypatch.setattr(study_module, "_read_study_files", lambda: files)
    with pytest.raises(ConfigError, match="column_params for unknown column 'kd'"):
        load_study("broken")


def test_study_figures_are_drawn_from_the_runs_on_disk(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mkdlab.studies.figures import plot_teacher_weights, write_figures
    from mkdlab.teachers import TeacherPool

    row = tiny_row_with_teachers(["ce", "aver_kd", "ebkd"], steps=3)
    records = run_study(row, [0], out=tmp_path / "runs", pool=TeacherPool(tmp_path / "pool"), verbose=False,
                        record_extras=True)
    weights = plot_teacher_weights(row, tmp_path / "runs")
    assert [ax.get_title() for ax in weights.axes] == ["ebkd"]  # AVER-KD's fixed 1/K is left out
    paths = write_figures(row, records, tmp_path / "runs", tmp_path / "fig")
    assert [p.name for p in paths] == [f"tiny_{n}.png" for n in ("accuracy", "weights", "gradcam", "cost")]
    assert all(p.stat().st_size > 5_000 for p in paths)
