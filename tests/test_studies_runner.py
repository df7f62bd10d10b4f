"""The study runner: finished runs are skipped and interrupted ones resumed, the process pool trains each teacher
once and matches the sequential runs, and any executor can carry the pending runs out."""

from __future__ import annotations

import csv
from collections.abc import Sequence

import pytest
from helpers import tiny_row_with_teachers

import mkdlab.engine.trainer as trainer_module
from mkdlab.config import MethodConfig, load_config
from mkdlab.studies import (
    Column,
    Reported,
    RunJob,
    RunRecord,
    SequentialExecutor,
    StudyRow,
    read_records,
    run_study,
    write_report,
)
from mkdlab.studies.records import write_record


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
        if self.state.global_step == 1:
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


def test_parallel_runner_trains_each_teacher_once_and_matches_the_sequential_runs(tmp_path, monkeypatch):
    import torch

    from mkdlab.teachers import TeacherPool

    row = tiny_row_with_teachers(["ce", "kd", "aver_kd"], steps=4)
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # one thread per worker, as below for the sequential runs
    parallel = run_study(row, [0, 1], out=tmp_path / "parallel", pool=TeacherPool(tmp_path / "pool"),
                         verbose=False, jobs=2)
    pool = TeacherPool(tmp_path / "pool", shipped=None)
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


class RecordingExecutor:
    """An executor that trains nothing: it notes the jobs it gets and writes a made-up record for each."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int]]] = []

    def run(self, jobs: Sequence[RunJob], pool, *, record_extras: bool, verbose: bool) -> None:
        self.calls.append([(job.column.label, job.seed) for job in jobs])
        for job in jobs:
            write_record(RunRecord(job.column.label, job.column.method.name, job.seed, 50.0 + job.seed,
                                   60.0 + job.seed, 1, 1, 1.0, 1.0), job.config.run_dir())


def test_an_executor_gets_only_the_pending_runs_and_their_records_come_back_in_column_seed_order(tmp_path):
    row = tiny_row_with_teachers(["ce", "kd"], steps=1)
    finished = RunRecord("kd", "kd", 0, 1.0, 2.0, 1, 1, 1.0, 1.0)
    write_record(finished, tmp_path / "tiny" / "kd" / "seed0")
    executor = RecordingExecutor()
    records = run_study(row, [0, 1], out=tmp_path, executor=executor, verbose=False)
    assert executor.calls == [[("ce", 0), ("ce", 1), ("kd", 1)]]
    assert [(r.label, r.seed, r.best_top1) for r in records] == [
        ("ce", 0, 60.0), ("ce", 1, 61.0), ("kd", 0, 2.0), ("kd", 1, 61.0)]
    assert run_study(row, [0, 1], out=tmp_path, executor=executor, verbose=False) == records
    assert len(executor.calls) == 1  # nothing pending: the executor is not called
    with pytest.raises(ValueError, match="jobs .* or an executor, not both"):
        run_study(row, [0], out=tmp_path, executor=SequentialExecutor(), jobs=2)
