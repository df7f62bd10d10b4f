"""The graded exercises of notebooks 01-09 test something: with the solution each test cell passes; with the solution
region replaced as nbgrader's student release does, the solution cell raises and its test fails on an assert.

Only the notebook's ``setup`` cells run before an exercise (the course convention: exercises are self-contained).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("0*.ipynb")) if p.name[:2] != "00"]
REGION = re.compile(r"### BEGIN SOLUTION\n.*?### END SOLUTION", re.S)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n.*?### END HIDDEN TESTS", re.S)
RELEASED = "# YOUR CODE HERE\nraise NotImplementedError()"


def grade_id(cell: nbformat.NotebookNode) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def run(source: str, namespace: dict) -> None:
    exec(compile(source, "<exercise cell>", "exec"), namespace)  # noqa: S102 - the notebook's own cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_graded_exercise_passes_solved_and_fails_released(path, monkeypatch):
    monkeypatch.setenv("MKDLAB_PROFILE", "smoke")
    cells = nbformat.read(path, as_version=4).cells
    number = path.name[:2]
    setup: dict = {"__name__": "__main__"}
    for cell in cells:
        if cell.cell_type == "code" and "setup" in cell.metadata.get("tags", []):
            run(cell.source, setup)
    solutions = [i for i, c in enumerate(cells) if grade_id(c).endswith("-solution")]
    assert len(solutions) >= 3, "at least three autograded exercises per notebook"
    assert any(re.fullmatch(rf"{number}-q\d+", grade_id(c)) for c in cells), "at least one open question"
    for i in solutions:
        solution, test = cells[i], cells[i + 1]
        gid = grade_id(solution)
        assert grade_id(test) == gid.replace("-solution", "-test") and test.metadata.nbgrader["grade"], gid
        assert cells[i - 1].source.startswith(f"**Exercise {number}."), f"{gid}: a prompt cell comes first"
        for test_source in (test.source, HIDDEN.sub("", test.source)):  # the instructor's and the student's test
            namespace = dict(setup)
            run(solution.source, namespace)
            run(test_source, namespace)
            namespace = dict(setup)
            with pytest.raises(NotImplementedError):
                run(REGION.sub(RELEASED, solution.source), namespace)
            with pytest.raises(AssertionError):
                run(test_source, namespace)
