"""Every lesson opens with a header (goals, prerequisites, times, neighbours); the reading order links them all."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_lesson_opens_with_its_header(path):
    notebook = nbformat.read(path, as_version=4)
    header = notebook.cells[0]
    assert header.cell_type == "markdown"
    text = header.source
    assert text.startswith(f"# {path.name[:2]} · ")
    for part in ("**Learning goals**", "**Prerequisites**", "**Time**"):
        assert part in text, f"{path.name}: the header has no {part}"
    for profile in ("smoke", "quick", "full", "GPU"):
        assert re.search(rf"\b{profile}\b", text), f"{path.name}: no time given for {profile}"
    links = set(re.findall(r"\]\((\d\d_[^)#]+\.ipynb)\)", text))
    assert all((path.parent / link).is_file() for link in links), f"{path.name}: broken lesson link in {links}"
    index = NOTEBOOKS.index(path)
    neighbours = {p.name for p in NOTEBOOKS[max(index - 1, 0): index + 2]} - {path.name}
    assert neighbours <= links, f"{path.name}: the header must link to the previous and the next lesson"


def test_reading_order_lists_every_lesson_with_a_link():
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"]({path.name})" in readme, f"notebooks/README.md does not link {path.name}"
    for command in ("course.py release", "course.py check", "course.py render"):
        assert command in readme
