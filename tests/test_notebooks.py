"""Notebook hygiene (nbval itself executes them: ``pytest notebooks --nbval-lax``)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
from strip_notebook_outputs import is_checked, strip  # noqa: E402


def test_the_series_is_numbered_from_00():
    names = [p.name for p in NOTEBOOKS]
    assert names and names[0].startswith("00_")
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(len(names))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_except_nbval_references(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if not is_checked(cell):
            assert cell.execution_count is None, f"cell {index} has an execution count"
            assert not cell.outputs, f"cell {index} has outputs: run scripts/strip_notebook_outputs.py"
        for output in cell.outputs:
            assert output.output_type in ("stream", "execute_result"), f"cell {index}: {output.output_type}"
            assert set(output.get("data", {})) <= {"text/plain"}, f"cell {index} keeps a rich output"
    assert strip(nbformat.read(path, as_version=4)) == notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_profile_is_read_in_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code" and "current_profile()" in c.source]
    assert len(cells) == 1, "exactly one parameters cell must read mkdlab.current_profile()"
    assert notebook.cells.index(cells[0]) < 4, "the parameters cell comes first"


def test_profiles_follow_the_environment():
    from mkdlab.profiles import Profile, current_profile

    assert current_profile({"CI": "true"}) is Profile.SMOKE
    assert current_profile({}) is Profile.QUICK
    assert current_profile({"MKDLAB_PROFILE": "full", "CI": "1"}) is Profile.FULL
    with pytest.raises(ValueError, match="smoke, quick, full"):
        current_profile({"MKDLAB_PROFILE": "fast"})
