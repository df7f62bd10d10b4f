"""Tests of the training loggers (files, console, visdom with and without a server) and the
offline visdom server launcher."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, visdom_process

from mkdlab.engine.loggers import ConsoleLogger, JsonlLogger, Logger, make_loggers, progress
from mkdlab.engine.visdom_logger import VisdomLogger, VisdomUnavailableWarning, probe_http

REPO = Path(__file__).resolve().parents[1]


def _record(epoch: int, **extra: float | int | str) -> dict[str, float | int | str]:
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.05, "train_loss": 2.0 / epoch,
            "train_top1": 50.0 + epoch, "test_loss": 2.5 / epoch, "test_top1": 48.0 + epoch,
            "best_top1": 48.0 + epoch, "best_epoch": epoch, "images_per_s": 312.4, **extra}


def _visdom_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, VisdomUnavailableWarning)]


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- JsonlLogger ----------------------------------------------------------------------------------


def test_jsonl_writes_appends_and_truncates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    logger = JsonlLogger(run)
    logger.log_step(1, {"ce": 1.5, "lr": 0.1})
    logger.log_epoch(1, _record(1))
    # flushed at once: readable before close
    assert _read_jsonl(run / "history.jsonl") == [{**_record(1)}]
    logger.log_step(2, {"ce": 1.2, "kd": 0.3, "lr": 0.1})
    logger.log_epoch(2, _record(2, note="warm-up done"))
    logger.close()

    resumed = JsonlLogger(run)  # resume: appends, never truncates
    assert [row["epoch"] for row in resumed.rows] == [1, 2]
    resumed.log_epoch(3, _record(3, test_top5=91.0))
    rows = _read_jsonl(run / "history.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[1]["note"] == "warm-up done"

    with open(run / "history.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
        header = list(table[0])
    assert header[0] == "epoch"
    assert set(header) == set(_record(1)) | {"note", "test_top5"}
    assert header.index("note") < header.index("test_top5")  # order of first appearance
    assert [r["epoch"] for r in table] == ["1", "2", "3"]
    assert table[0]["note"] == "" and table[2]["test_top5"] == "91.0"

    removed = resumed.truncate_after_epoch(1)
    assert removed == 2
    assert [row["epoch"] for row in _read_jsonl(run / "history.jsonl")] == [1]
    resumed.log_epoch(2, _record(2))
    assert [row["epoch"] for row in _read_jsonl(run / "history.jsonl")] == [1, 2]
    with open(run / "history.csv", newline="") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    resumed.close()

    steps = _read_jsonl(run / "steps.jsonl")
    assert steps == [{"step": 1, "ce": 1.5, "lr": 0.1}, {"step": 2, "ce": 1.2, "kd": 0.3, "lr": 0.1}]


def test_jsonl_step_rows_resume_and_repair(tmp_path: Path) -> None:
    logger = JsonlLogger(tmp_path)
    for step in (10, 20, 30):
        logger.log_step(step, {"ce": float(step)})
    logger.close()
    resumed = JsonlLogger(tmp_path)
    resumed.log_step(20, {"ce": -1.0})  # re-logged after resuming from the step-10 checkpoint
    resumed.truncate_after_epoch(0, after_step=15)
    resumed.log_step(16, {"ce": 16.0})
    resumed.close()
    assert [row["step"] for row in _read_jsonl(tmp_path / "steps.jsonl")] == [10, 16]

    # a line cut by a crash mid-write is dropped instead of gluing the next row to it
    with open(tmp_path / "history.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "train_lo')
    again = JsonlLogger(tmp_path)
    again.log_epoch(1, {"train_loss": 1.0})
    again.close()
    assert _read_jsonl(tmp_path / "history.jsonl") == [{"epoch": 1, "train_loss": 1.0}]


# -- ConsoleLogger, progress, make_loggers --------------------------------------------------------


def test_console_line() -> None:
    stream = io.StringIO()
    console = ConsoleLogger(stream=stream, total_epochs=30)
    console.log_step(5, {"ce": 1.0})
    console.log_epoch(3, _record(3, lr=0.05, train_loss=1.2344, test_top1=71.24, best_top1=71.9))
    console.close()
    assert stream.getvalue() == "epoch 3/30  loss 1.234  top1 71.2  best 71.9  lr 0.05  312 img/s\n"

    sparse = io.StringIO()
    every = ConsoleLogger(stream=sparse, every=5)
    for epoch in range(1, 11):
        every.log_epoch(epoch, {"epochs": 10, "train_loss": 1.0})
    assert [line.split()[1] for line in sparse.getvalue().splitlines()] == ["1/10", "5/10", "10/10"]


def test_progress_disabled_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("CI", "true")
    bar = progress(range(3), total=3, desc="x")
    assert getattr(bar, "disable", None) is True
    assert list(bar) == [0, 1, 2]
    assert progress(range(3), total=3, desc="x", enabled=True).disable is False
    monkeypatch.delenv("CI")
    assert progress(range(3), total=3, desc="x").disable is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress(range(3), total=3, desc="x").disable is True


def test_make_loggers_with_unreachable_visdom(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = make_loggers(tmp_path, visdom=True, visdom_port=free_port(), run_name="r")
    assert [type(lg).__name__ for lg in loggers] == ["JsonlLogger", "ConsoleLogger", "VisdomLogger"]
    assert all(isinstance(lg, Logger) for lg in loggers)
    assert len(_visdom_warnings(caught)) == 1
    assert make_loggers(tmp_path / "b", console=False)[0].__class__ is JsonlLogger


# -- VisdomLogger fallbacks -----------------------------------------------------------------------


def _assert_single_fallback(port: int, limit: float) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        vis = VisdomLogger(port=port, timeout=1.0, run_name="t")
        vis.log_step(1, {"ce": 1.0, "lr": 0.1})
        vis.log_epoch(1, _record(1))
        vis.close()
        elapsed = time.monotonic() - start
    assert elapsed < limit
    assert not vis.enabled
    found = _visdom_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in caught]
    message = str(found[0].message)
    assert f"127.0.0.1:{port}" in message and f"`python -m mkdlab visdom --port {port}`" in message
    assert [w for w in caught if w not in found] == []


def test_visdom_no_server_falls_back_quickly() -> None:
    _assert_single_fallback(free_port(), limit=3.0)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()
    assert accepted, "the logger never connected to the silent port"


def test_visdom_silent_port_falls_back_within_bound(silent_port: int) -> None:
    _assert_single_fallback(silent_port, limit=5.0)


def test_probe_rejects_silent_port(silent_port: int) -> None:
    start = time.monotonic()
    with pytest.raises(OSError):
        probe_http("127.0.0.1", silent_port, 0.3)
    assert time.monotonic() - start < 1.0


# -- the offline server, for real ----------------------------------------------------------------


@pytest.fixture(scope="module")
def visdom_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``python -m mkdlab visdom --api-only`` on a free port, terminated afterwards."""
    pytest.importorskip("visdom")
    tmp_path = tmp_path_factory.mktemp("visdom")
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with visdom_process("--api-only", "--env-path", str(tmp_path / "envs"), port=port, log_path=log_path, cwd=REPO,
                        env=env, poll_s=0.1):
        yield port
    output = log_path.read_text()
    assert "Checking for scripts" not in output and "Downloading" not in output, output
    assert "Traceback" not in output, output


def test_visdom_logger_against_offline_server(visdom_server: int) -> None:
    import visdom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vis = VisdomLogger(port=visdom_server, env="mkdlab_test", timeout=2.0, run_name="run1")
        assert vis.enabled
        for epoch in (1, 2):
            vis.log_step(10 * epoch, {"ce": 1.0 / epoch, "kd": 0.5 / epoch, "lr": 0.1})
            vis.log_epoch(epoch, _record(epoch))
        vis.close()
    assert _visdom_warnings(caught) == []
    assert vis.dropped == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # visdom's own logger.warn call
        client = visdom.Visdom(port=visdom_server, env="mkdlab_test", raise_exceptions=True,
                               use_incoming_socket=False)
    windows = json.loads(client.get_window_data(env="mkdlab_test"))
    assert {"run1/loss", "run1/top1", "run1/lr", "run1/step/loss", "run1/step/lr"} <= set(windows)
    top1 = json.loads(client.get_window_data(win="run1/top1", env="mkdlab_test"))
    traces = {trace["name"]: trace for trace in top1["content"]["data"]}
    assert set(traces) == {"train", "test", "best"}
    assert traces["test"]["x"] == [1.0, 2.0] and traces["test"]["y"] == [49.0, 50.0]
    assert traces["train"]["y"] == [51.0, 52.0]
    steps = json.loads(client.get_window_data(win="run1/step/loss", env="mkdlab_test"))
    assert {trace["name"]: trace["x"] for trace in steps["content"]["data"]} == {
        "ce": [10.0, 20.0], "kd": [10.0, 20.0]}


def test_visdom_sending_never_blocks_and_failures_disable_once(
    visdom_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vis = VisdomLogger(port=visdom_server, env="mkdlab_test", run_name="run2", queue_size=2)
        assert vis.enabled
        release = threading.Event()
        sent: list[float] = []

        def slow_send(x: float, xlabel: str, groups: object) -> None:
            release.wait(5)
            sent.append(x)

        monkeypatch.setattr(vis, "_send", slow_send)
        start = time.monotonic()
        for epoch in range(1, 21):
            vis.log_epoch(epoch, _record(epoch))
        assert time.monotonic() - start < 0.5  # a stuck sender does not slow the caller
        assert vis.dropped >= 17
        release.set()

        def broken_send(x: float, xlabel: str, groups: object) -> None:
            raise ConnectionError("server went away")

        time.sleep(0.2)
        monkeypatch.setattr(vis, "_send", broken_send)
        for epoch in range(21, 25):
            vis.log_epoch(epoch, _record(epoch))
        vis.close()
    assert not vis.enabled
    assert sent and sent == sorted(sent)
    found = _visdom_warnings(caught)
    assert len(found) == 1 and "server went away" in str(found[0].message)
