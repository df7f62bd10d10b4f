"""The visdom dashboard offline, end to end: ``python -m mkdlab visdom`` serves the assets fetched from npm, a short
``output.visdom=true`` run logs to it, and headless Chromium (Debian's, driven by Playwright, no browser download)
draws the loss and accuracy plots with the logged points and raises no JavaScript error.

Needs ``python -m mkdlab visdom --fetch-assets`` once (``.ci/run`` does it), ``/usr/bin/chromium`` (or
``$MKDLAB_CHROMIUM``) and the ``playwright`` package; skipped, saying which is missing, otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, visdom_process

from mkdlab.engine.visdom_assets import assets_problem, default_assets_dir

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
CHROMIUM = os.environ.get("MKDLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "MKDLAB_HOME": str(home), "CI": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[int]:
    """``python -m mkdlab visdom`` on a free port with the fetched assets; stopped afterwards."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install` needed)")
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set MKDLAB_CHROMIUM)")
    if problem := assets_problem(default_assets_dir()):
        pytest.skip(problem)
    port = free_port()
    log_path = tmp_path / "server.log"
    with visdom_process("--env-path", str(tmp_path / "envs"), port=port, log_path=log_path, cwd=tmp_path,
                        env=_env(tmp_path / "home")):
        yield port
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def _train(tmp_path: Path, port: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """A short run (one epoch of ``STEPS`` steps, each logged) that logs to the dashboard; its step and epoch
    records as the file logger wrote them."""
    subprocess.run([sys.executable, "-m", "mkdlab", "train", "ce", "train.epochs=1", f"train.max_steps={STEPS}",
                    "train.log_every_steps=1", "data.batch_size=16", "output.dir=runs", "output.visdom=true",
                    f"output.visdom_port={port}"],
                   cwd=tmp_path, env=_env(tmp_path / "home"), check=True, capture_output=True, timeout=240)
    run = tmp_path / "runs" / "ce-resnet8"
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return steps, epochs


#: every plotly plot on the page: its title and each trace's name and points.
PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => ({
    title: (plot.layout && plot.layout.title && (plot.layout.title.text || plot.layout.title)) || '',
    traces: (plot.data || []).map(trace => ({name: trace.name, x: Array.from(trace.x), y: Array.from(trace.y)})),
    points: plot.querySelectorAll('.scatterlayer path.point').length,
    lines: plot.querySelectorAll('.scatterlayer path.js-line').length}))"""


def test_dashboard_draws_the_logged_curves_offline(tmp_path: Path, dashboard: int) -> None:
    from playwright.sync_api import sync_playwright

    steps, epochs = _train(tmp_path, dashboard)
    assert [record["step"] for record in steps] == list(range(1, STEPS + 1)) and len(epochs) == 1
    errors: list[str] = []
    outside: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(f"console {msg.text}") if msg.type == "error" else None)
        page.on("request", lambda req: None if req.url.startswith(f"http://127.0.0.1:{dashboard}/")
                or req.url.startswith(("data:", "blob:", "ws://127.0.0.1")) else outside.append(req.url))
        page.goto(f"http://127.0.0.1:{dashboard}/env/mkdlab", wait_until="load")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=20_000)
        page.wait_for_timeout(500)
        plots = page.evaluate(PLOTS_JS)
        page.screenshot(path=str(tmp_path / "visdom_dashboard.png"))
        browser.close()
    assert errors == []
    assert outside == []  # nothing asked of a CDN
    by_title = {plot["title"].split(" (")[0]: plot for plot in plots}
    assert {"loss", "top1", "step/loss"} <= set(by_title), sorted(by_title)
    for curve in ("loss", "top1"):  # one point per epoch, train and test traces
        traces = {trace["name"]: trace for trace in by_title[curve]["traces"]}
        for split in ("train", "test"):
            assert traces[split]["x"] == [1.0]
            assert traces[split]["y"] == pytest.approx([epochs[0][f"{split}_{curve}"]], rel=1e-6)
        assert by_title[curve]["points"] == len(traces)  # each epoch's point drawn, not only held as data
    step_traces = {trace["name"]: trace for trace in by_title["step/loss"]["traces"]}
    assert sorted(step_traces) == sorted(set(steps[0]) - {"step", "lr"})  # the loss terms (ce for this run)
    for name, trace in step_traces.items():
        assert trace["x"] == [float(record["step"]) for record in steps]
        assert trace["y"] == pytest.approx([record[name] for record in steps], rel=1e-6)
    assert by_title["step/loss"]["lines"] == len(step_traces)  # a drawn line per trace, not only data
    assert (tmp_path / "visdom_dashboard.png").stat().st_size > 10_000
