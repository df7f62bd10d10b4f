"""Helpers shared by the test modules (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def visdom_process(*args: str, port: int, log_path: Path, env: Mapping[str, str], cwd: Path | None = None,
                   poll_s: float = 0.2) -> Iterator[subprocess.Popen]:
    """``python -m mkdlab visdom --port PORT *args`` with its output in ``log_path``, yielded once it answers HTTP
    (the test fails, showing the log, if it exits or is not up within 60 s); terminated (killed if it hangs)."""
    from mkdlab.engine.visdom_logger import probe_http

    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "mkdlab", "visdom", "--port", str(port), *args],
                                stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe_http("127.0.0.1", port, 1.0)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the visdom server did not come up:\n{log_path.read_text()}")
                time.sleep(poll_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
