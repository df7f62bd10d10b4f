"""The test run's two pieces of machinery: one share of the CPU cores per pytest-xdist worker, and the longest test
files first.

**Threads.** Without a share, each of the README's two workers (``-n 2``) computes on every core, and on a 2-core
machine four compute threads spin against each other. The notebook kernels and the CLI subprocesses inherit the
variable; a value the user set is kept.

**Order.** ``--dist loadfile`` hands whole files to the workers in the order of the collection (xdist would otherwise
order them by their number of tests, which puts a few long tests, the torchrun and Ray ones, at the very end, where
one worker runs them while the other idles). The files are collected longest first, by the seconds recorded in
``tests/data/durations.json`` (files it does not list come last, in their usual order). After adding or changing
slow tests, record the file times again with the README's test command plus
``--record-durations tests/data/durations.json``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("tests") / "data" / "durations.json"
#: seconds per test file in this run (what ``--record-durations`` writes)
_FILE_SECONDS: defaultdict[str, float] = defaultdict(float)

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", metavar="PATH", default=None,
                     help="write each test file's seconds (setup + call + teardown, summed) to PATH as JSON")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist keeps the collection order below


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    # a stable sort on the file's seconds: each file's tests stay together and in their order
    items.sort(key=lambda item: -float(seconds.get(_file_of(item.nodeid), 0.0)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FILE_SECONDS[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--record-durations")
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller sees every worker's reports
        ranked = sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])
        Path(path).write_text(json.dumps({name: round(value, 1) for name, value in ranked}, indent=1) + "\n")
