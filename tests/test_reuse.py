"""Finished runs reused ("load if present, else train"): what the notebooks call for every student run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mkdlab.config import load_config
from mkdlab.engine.trainer import Trainer
from mkdlab.experiment import with_method
from mkdlab.reuse import run_or_load
from mkdlab.teachers import TeacherPool


@pytest.fixture(autouse=True)
def reuse_on(monkeypatch):
    """Reuse as a user has it: the notebooks' conftest turns it off for the notebook run in the same process."""
    monkeypatch.delenv("MKDLAB_REUSE_RUNS", raising=False)


@pytest.fixture
def steps(monkeypatch):
    """The number of optimiser steps trained so far in this test."""
    count = {"steps": 0}
    original = Trainer._step

    def counted(self, batch):
        count["steps"] += 1
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_step", counted)
    return count


@pytest.fixture
def base(tmp_path):
    return load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                        "teachers": {"arch": "resnet8", "seeds": [0, 1], "epochs": 1, "max_steps": 2},
                        "train": {"epochs": 2, "max_steps": 4, "device": "cpu", "log_every_steps": 0},
                        "output": {"dir": str(tmp_path / "runs")}})


def test_a_finished_run_is_read_back_without_training(base, tmp_path, steps):
    pool = TeacherPool(tmp_path / "home", shipped=None)
    config = with_method(base, "aver_kd")
    trained, method = run_or_load(config, pool=pool, record_extras=True)
    assert steps["steps"] == 4 + 2 * 2  # the student's 4 steps and each teacher's 2
    again, reused = run_or_load(config, pool=pool, record_extras=True)
    assert steps["steps"] == 8  # nothing trained
    assert again.history == trained.history and again.best_top1 == trained.best_top1
    assert again.wall_time_s == pytest.approx(sum(row["epoch_time_s"] for row in trained.history))
    assert len(again.extras) == len(trained.extras) == 1  # the 4-step budget ends in the first epoch
    assert torch.equal(again.extras[-1]["teacher_weights"], trained.extras[-1]["teacher_weights"])
    for (name, value), (_, expected) in zip(reused.export_student().state_dict().items(),
                                            method.export_student().state_dict().items(), strict=True):
        assert torch.equal(value, expected), name


def test_another_config_missing_extras_or_reuse_turned_off_train_again(base, tmp_path, steps, monkeypatch):
    pool = TeacherPool(tmp_path / "home", shipped=None)
    config = with_method(base, "ce")
    run_or_load(config, pool=pool)
    assert steps["steps"] == 4
    run_or_load(config, pool=pool, record_extras=True)  # the finished run recorded no extras
    assert steps["steps"] == 8
    changed = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=0.01))
    run_or_load(changed, pool=pool, record_extras=True)
    assert steps["steps"] == 12
    run_or_load(changed, pool=pool, record_extras=True)
    assert steps["steps"] == 12
    monkeypatch.setenv("MKDLAB_REUSE_RUNS", "0")
    run_or_load(changed, pool=pool, record_extras=True)
    assert steps["steps"] == 16
