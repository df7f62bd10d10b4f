"""The course edition: nbgrader release and its two-way check, the lesson headers, the rendered HTML edition."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import course  # noqa: E402

pytest.importorskip("nbgrader", reason="nbgrader is in the dev extra: pip install -e '.[dev]'")

SOLUTION = {"grade": False, "solution": True, "locked": False, "task": False, "schema_version": 3}
TEST = {"grade": True, "solution": False, "locked": True, "task": False, "points": 1, "schema_version": 3}


def exercise(grade: str, solution: str, test: str) -> list[nbformat.NotebookNode]:
    """A solution cell and its autograded test cell, with nbgrader metadata as the course conventions say."""
    return [nbformat.v4.new_code_cell(solution, metadata={"nbgrader": {**SOLUTION, "grade_id": f"{grade}-solution"}}),
            nbformat.v4.new_code_cell(test, metadata={"nbgrader": {**TEST, "grade_id": f"{grade}-test"}})]


@pytest.mark.slow
def test_release_and_check_pass_on_the_series(tmp_path):
    release = tmp_path / "release"
    assert course.main(["release", "--release", str(release)]) == 0
    student = nbformat.read(release / "00_setup_and_data" / "00_setup_and_data.ipynb", as_version=4)
    sources = "\n".join(c.source for c in student.cells)
    assert "raise NotImplementedError()" in sources and "### BEGIN SOLUTION" not in sources
    assert "BEGIN HIDDEN TESTS" not in sources and "YOUR ANSWER HERE" in sources
    # the lessons' cells run in a process of their own, so that they leave nothing behind in this one
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "course.py"), "check", "--release", str(release)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("00_setup_and_data ")]
    assert len(rows) >= 1 and all(line.endswith("ok") for line in rows), done.stdout
    assert " 0 violations" in done.stdout


@pytest.mark.slow
def test_check_catches_a_test_that_passes_on_the_stub_and_one_that_fails_on_the_source(tmp_path, capsys):
    series = tmp_path / "notebooks"
    series.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# 00 · toy"),
        nbformat.v4.new_code_cell("import math\nBASE = 2", metadata={"tags": ["setup"]}),
        nbformat.v4.new_code_cell("BASE = 1000  # not a setup cell: an exercise must not see it"),
        *exercise("00-ex1", "power = None\n### BEGIN SOLUTION\npower = BASE ** 3\n### END SOLUTION",
                  "assert power == 8, 'BASE cubed'"),
        *exercise("00-ex2", "root = 2.0\n### BEGIN SOLUTION\nroot = math.sqrt(4)\n### END SOLUTION",
                  "assert root == 2.0, 'the placeholder already passes: a violation'"),
        *exercise("00-ex3", "half = None\n### BEGIN SOLUTION\nhalf = BASE / 3\n### END SOLUTION",
                  "assert half == 1, 'the model solution is wrong: a violation'"),
        *exercise("00-ex4", "### BEGIN SOLUTION\nlog = math.log2(BASE)\n### END SOLUTION",
                  "assert log == 1, 'no placeholder: NameError on the release, a violation'"),
    ]
    nbformat.write(notebook, series / "00_toy.ipynb")
    release = tmp_path / "release"
    assert course.main(["release", "--notebooks", str(series), "--release", str(release)]) == 0
    capsys.readouterr()
    assert course.main(["check", "--notebooks", str(series), "--release", str(release)]) == 1
    table = capsys.readouterr().out
    verdict = {line.split()[1]: line.split()[-1] for line in table.splitlines() if line.startswith("00_toy ")}
    assert verdict == {"00-ex1-test": "ok", "00-ex2-test": "VIOLATION", "00-ex3-test": "VIOLATION",
                       "00-ex4-test": "VIOLATION"}, table
    assert "PASSES on the stub" in table and "NameError" in table and "4 autograded tests, 3 violations" in table


def test_check_without_a_release_says_what_to_do(tmp_path, capsys):
    assert course.main(["check", "--release", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mkdlab: error: ") and "course.py release" in err


def test_executed_copies_lend_their_outputs_only_to_the_same_code(tmp_path):
    import course_render

    series, executed = tmp_path / "notebooks", tmp_path / "executed"
    series.mkdir(), executed.mkdir()
    lesson = nbformat.v4.new_notebook()
    lesson.cells = [nbformat.v4.new_markdown_cell("# 00 · now"), nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(lesson, series / "00_x.ipynb")
    ran = nbformat.v4.new_notebook()
    ran.cells = [nbformat.v4.new_markdown_cell("# 00 · before"), nbformat.v4.new_code_cell("print(1)")]
    ran.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nbformat.write(ran, executed / "00_x.ipynb")
    merged = course_render.executed_copy(executed, series / "00_x.ipynb")
    assert merged.cells[0].source == "# 00 · now" and merged.cells[1].outputs[0].text == "1\n"
    ran.cells[1].source = "print(2)"
    nbformat.write(ran, executed / "00_x.ipynb")
    with pytest.raises(course.CourseError, match="stale"):
        course_render.executed_copy(executed, series / "00_x.ipynb")
    assert course_render.link_pages('<a href="01_b.ipynb#s">') == '<a href="01_b.html#s">'
    assert course_render.link_pages('<a href="README.md">') == '<a href="index.html">'


def tiny_lesson(number: int, title: str, link: str) -> nbformat.NotebookNode:
    """A lesson with a link to its neighbour and one figure, as the rendered edition shows it."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_markdown_cell(f"# {number:02d} · {title}\n\nNext: [the other lesson]({link})"),
        nbformat.v4.new_code_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\n\n"
                                  "plt.plot([0, 1], [1, 0])\nplt.show()"),
    ]
    return notebook


@pytest.mark.slow
def test_rendered_edition_loads_in_chromium_with_its_figures(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    series = tmp_path / "notebooks"
    series.mkdir()
    nbformat.write(tiny_lesson(0, "first", "01_second.ipynb"), series / "00_first.ipynb")
    nbformat.write(tiny_lesson(1, "second", "00_first.ipynb#top"), series / "01_second.ipynb")
    (series / "README.md").write_text("# The toy course\n\n1. [first](00_first.ipynb)\n2. [second](01_second.ipynb)\n")
    out = tmp_path / "site"
    assert course.main(["render", "--notebooks", str(series), "--out", str(out), "--profile", "smoke",
                        "--timeout", "120"]) == 0
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / "index.html").as_uri())
        assert page.locator("h1").first.inner_text().startswith("The toy course")
        pages = sorted(set(page.eval_on_selector_all("a[href$='.html']", "els => els.map(e => e.href)")))
        assert [Path(href).name for href in pages] == ["00_first.html", "01_second.html"]
        for href in pages:
            response = page.goto(href)
            assert response is not None and response.ok, href
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths), f"{href}: figures {widths}"
            links = page.eval_on_selector_all("a[href*='_']", "els => els.map(e => e.getAttribute('href'))")
            assert any(re.fullmatch(r"0\d_\w+\.html(#top)?", link) for link in links), links
        browser.close()
