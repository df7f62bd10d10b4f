"""Helpers shared by the test modules (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import os
import signal

from mkdlab.config import MethodConfig, load_config
from mkdlab.methods.base import TrainingHooks, TrainState
from mkdlab.studies import Column, StudyRow


class StopAt(TrainingHooks):
    """A trainer callback that asks the run to stop after global step ``step`` (a simulated kill).

    With ``use_signal`` it sends the process a real SIGTERM instead of calling ``request_stop``.
    """

    def __init__(self, step: int, use_signal: bool = False) -> None:
        self.step, self.use_signal = step, use_signal

    def after_step(self, state: TrainState, batch, output) -> None:
        if state.global_step + 1 == self.step:  # global_step is incremented after the callbacks
            if self.use_signal:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                state.request_stop()


def tiny_row_with_teachers(methods: list[str], steps: int) -> StudyRow:
    """A study row of ``methods`` on two 3-step resnet8 teachers and a ``steps``-step resnet8 student (CPU)."""
    base = load_config({"name": "tiny", "student": "resnet8", "data": {"dataset": "fashion_mnist_mini"},
                        "teachers": {"arch": "resnet8", "seeds": [0, 1], "epochs": 1, "max_steps": 3},
                        "train": {"epochs": 1, "max_steps": steps, "device": "cpu", "log_every_steps": 0}})
    return StudyRow("tiny", "test", base, [Column(m, MethodConfig(m)) for m in methods])
