"""Helpers shared by the test modules (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import os
import signal

from mkdlab.methods.base import TrainingHooks, TrainState


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
