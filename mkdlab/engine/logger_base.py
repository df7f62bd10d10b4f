"""What every logger is: its own small API (``log_step``, ``log_epoch``, ``close``), usable on its own, and the
training hooks through which the trainer calls it (the same surface methods and callbacks use)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mkdlab.methods.base import TrainingHooks, TrainState


class Logger(TrainingHooks):
    """Base of the loggers: subclasses implement :meth:`log_step`, :meth:`log_epoch` and :meth:`close`.

    As training hooks: ``on_step_metrics`` → ``log_step(global_step, metrics)``, ``on_epoch_record`` →
    ``log_epoch(epoch, record)``, ``on_train_end`` → ``close()``.
    """

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record per-step metrics (loss terms, lr) every N optimiser steps."""

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        """Record one history row at the end of an epoch."""

    def close(self) -> None:
        """Flush and release resources; further calls may be ignored."""

    def on_step_metrics(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        self.log_step(state.global_step, metrics)

    def on_epoch_record(self, state: TrainState, record: Mapping[str, Any]) -> None:
        self.log_epoch(int(record["epoch"]), record)

    def on_train_end(self, state: TrainState) -> None:
        self.close()
