"""The course edition of the notebooks: student release, a check of its graded cells, a rendered HTML edition.

Usage (from the repository root)::

    python scripts/course.py release          # course/release/<lesson>/<lesson>.ipynb, without solutions
    python scripts/course.py check            # every autograded test fails on the release, passes on the source
    python scripts/course.py render --profile quick --out site/   # browsable HTML of the executed series

The exercises follow nbgrader's conventions (cell metadata ``nbgrader``, schema version 3): a solution cell holds
the answer between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; the autograded test cell after it holds visible
asserts and hidden ones between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``. ``release`` copies the
notebooks into ``source/`` of a temporary nbgrader course root (``course/nbgrader_config.py``) and runs
``nbgrader generate_assignment`` there, which replaces the solutions by ``raise NotImplementedError()`` and drops
the hidden tests.

``check`` proves both directions without a Jupyter kernel: for every autograded test cell it executes, with plain
``exec`` in a fresh namespace and with the source notebooks' folder as working directory, the notebook's cells
tagged ``setup``, then the exercise's solution cell, then the test cell. On the student release the test cell must
fail (the stub's ``NotImplementedError`` is ignored), and not with a ``NameError``: every name the test reads gets
a placeholder above the solution region; on the source notebook both cells must pass. It prints one row
per exercise and exits with status 1 when any row is a violation. Setup and exercise cells must therefore be
plain Python (no IPython magics) and cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nbformat
from course_common import CourseError, lessons

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
NOTEBOOKS = ROOT / "notebooks"
RELEASE = COURSE / "release"
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


# --- release -------------------------------------------------------------------------------------------------


def release(notebooks: Path, out: Path) -> list[Path]:
    """Generate the student version of every notebook of ``notebooks`` into ``out/<lesson>/<lesson>.ipynb``.

    One nbgrader assignment per lesson; ``nbgrader generate_assignment`` runs once for all of them (glob ``*``)
    in a temporary course root configured by ``course/nbgrader_config.py``, without a gradebook database.
    """
    sources = lessons(notebooks)
    with tempfile.TemporaryDirectory(prefix="mkdlab-course-") as tmp:
        root = Path(tmp)
        shutil.copy(COURSE / "nbgrader_config.py", root / "nbgrader_config.py")
        for path in sources:
            (root / "source" / path.stem).mkdir(parents=True)
            shutil.copy(path, root / "source" / path.stem / path.name)
        command = [sys.executable, "-m", "nbgrader", "generate_assignment", "*", "--no-db", "--force",
                   f"--CourseDirectory.root={root}", "--log-level=WARN"]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise CourseError(f"nbgrader generate_assignment failed (is nbgrader installed? pip install -e '.[dev]'):"
                              f"\n{done.stdout}{done.stderr}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(root / "release", out)
    written = sorted(out.glob("*/*.ipynb"))
    if len(written) != len(sources):
        raise CourseError(f"nbgrader wrote {len(written)} notebooks for {len(sources)} lessons under {out}")
    return written


# --- check ---------------------------------------------------------------------------------------------------


def nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    """The cell's nbgrader metadata (empty for an ordinary cell)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def is_setup(cell: nbformat.NotebookNode) -> bool:
    """A code cell tagged ``setup``: the imports and parameters every exercise may use."""
    return cell.cell_type == "code" and "setup" in cell.get("metadata", {}).get("tags", [])


def is_autograded_test(cell: nbformat.NotebookNode) -> bool:
    """nbgrader's "autograder tests" cell: graded, not a solution, code."""
    meta = nbgrader_meta(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """A code cell the student fills in."""
    return cell.cell_type == "code" and bool(nbgrader_meta(cell).get("solution"))


@dataclasses.dataclass(frozen=True)
class Exercise:
    """The cells one autograded test needs: setup, the exercise's solution cells, the test."""

    grade_id: str
    setup: tuple[str, ...]
    solutions: tuple[str, ...]
    test: str


def exercises(notebook: nbformat.NotebookNode) -> dict[str, Exercise]:
    """Every autograded test of a notebook by grade id, with its solution cells.

    The solution of test ``NN-exK-test`` is the cell ``NN-exK-solution``; without such a cell, the solution cells
    between the previous test cell and this one.
    """
    cells = notebook.cells
    setup = tuple(c.source for c in cells if is_setup(c))
    by_id = {nbgrader_meta(c).get("grade_id"): c for c in cells if is_solution(c)}
    found: dict[str, Exercise] = {}
    previous = -1
    for index, cell in enumerate(cells):
        if not is_autograded_test(cell):
            continue
        grade_id = nbgrader_meta(cell).get("grade_id", f"cell {index}")
        paired = by_id.get(grade_id.removesuffix("-test") + "-solution")
        solutions = [paired] if paired is not None else [c for c in cells[previous + 1:index] if is_solution(c)]
        found[grade_id] = Exercise(grade_id, setup, tuple(c.source for c in solutions), cell.source)
        previous = index
    return found


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the cells where the notebook runs (relative paths in setup cells resolve as in Jupyter)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_exercise(exercise: Exercise, cwd: Path) -> tuple[str | None, str | None]:
    """Execute setup, solution and test cells in one fresh namespace.

    Returns ``(solution_error, test_error)``: ``None`` where the cells ran through, else the exception's type and
    message. A setup cell that raises is reported as the test's error (the exercise cannot run).
    """
    namespace: dict = {"__name__": "__main__"}
    solution_error = test_error = None
    with working_directory(cwd), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            for number, source in enumerate(exercise.setup):
                exec(compile(source, f"<setup cell {number}>", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 (any failure of a setup cell is reported, not raised)
            return None, f"setup cell raised {type(err).__name__}: {err}"
        for source in exercise.solutions:
            try:
                exec(compile(source, f"<{exercise.grade_id} solution>", "exec"), namespace)
            except Exception as err:  # noqa: BLE001
                solution_error = f"{type(err).__name__}: {err}".strip()
        try:
            exec(compile(exercise.test, f"<{exercise.grade_id}>", "exec"), namespace)
        except Exception as err:  # noqa: BLE001
            test_error = f"{type(err).__name__}: {err}".strip()
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    return solution_error, test_error


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the check's table."""

    lesson: str
    grade_id: str
    release: str
    source: str
    seconds: float
    violation: bool


def short(text: str, width: int = 46) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def check_lesson(source_path: Path, release_path: Path | None) -> list[Row]:
    """The rows of one lesson: each autograded test must fail on the release and pass on the source."""
    lesson = source_path.stem
    if release_path is None:
        return [Row(lesson, "-", "missing from the release", "-", 0.0, True)]
    release_nb = nbformat.read(release_path, as_version=4)
    rows: list[Row] = []
    leaked = [m for c in release_nb.cells for m in SOLUTION_MARKERS if m in c.source]
    if leaked:
        rows.append(Row(lesson, "-", f"keeps {leaked[0]!r}", "-", 0.0, True))
    source_tests = exercises(nbformat.read(source_path, as_version=4))
    student_tests = exercises(release_nb)
    for grade_id, student in student_tests.items():
        start = time.perf_counter()
        _, release_error = run_exercise(student, source_path.parent)
        release_cell = f"fails ({short(release_error, 40)})" if release_error else "PASSES on the stub"
        # A NameError means a name the test reads has no placeholder above the solution region.
        violation = release_error is None or release_error.startswith(("setup cell raised", "NameError"))
        instructor = source_tests.get(grade_id)
        if instructor is None:
            source_cell, violation = "no such test in the source", True
        else:
            solution_error, source_error = run_exercise(instructor, source_path.parent)
            problem = source_error or (solution_error and f"solution: {solution_error}")
            source_cell = f"FAILS ({short(problem, 40)})" if problem else "passes"
            violation = violation or bool(problem)
        rows.append(Row(lesson, grade_id, release_cell, source_cell, time.perf_counter() - start, violation))
    for grade_id in sorted(set(source_tests) - set(student_tests)):
        rows.append(Row(lesson, grade_id, "missing from the release", "-", 0.0, True))
    if not rows:
        rows.append(Row(lesson, "-", "no autograded tests", "-", 0.0, False))
    return rows


def check(notebooks: Path, release_dir: Path) -> list[Row]:
    """Check every lesson of ``notebooks`` against its student version under ``release_dir``."""
    if not release_dir.is_dir():
        raise CourseError(f"no student release in {release_dir}: run `python scripts/course.py release` first")
    import matplotlib

    matplotlib.use("Agg")  # figures of setup and exercise cells are not shown
    rows: list[Row] = []
    for path in lessons(notebooks):
        candidate = release_dir / path.stem / path.name
        rows.extend(check_lesson(path, candidate if candidate.is_file() else None))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The check's result as a fixed-width table, one row per autograded test."""
    header = ("lesson", "test", "release (must fail)", "source (must pass)", "s", "")
    lines = [(r.lesson, r.grade_id, r.release, r.source, f"{r.seconds:.1f}", "VIOLATION" if r.violation else "ok")
             for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *lines])


# --- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The three subcommands and their folders."""
    parser = argparse.ArgumentParser(prog="course.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rel = commands.add_parser("release", help="generate the student notebooks (nbgrader generate_assignment)")
    chk = commands.add_parser("check", help="autograded tests fail on the release and pass on the source")
    for sub in (rel, chk):
        sub.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the source notebooks (default notebooks/)")
        sub.add_argument("--release", type=Path, default=RELEASE, help="the student release (course/release/)")
    ren = commands.add_parser("render", help="build the HTML edition of the executed series")
    ren.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the series and its README.md")
    ren.add_argument("--profile", choices=("smoke", "quick", "full"), default="quick",
                     help="MKDLAB_PROFILE the notebooks are executed in (default quick)")
    ren.add_argument("--executed", type=Path, default=None,
                     help="take already-executed copies of the notebooks from this folder instead of executing")
    ren.add_argument("--out", type=Path, default=ROOT / "site", help="output folder (default site/)")
    ren.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run (default 3600)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors become ``mkdlab: error: …`` with exit status 2."""
    args = parse_args(argv)
    try:
        if args.command == "release":
            for path in release(args.notebooks, args.release):
                print(path)
            return 0
        if args.command == "check":
            rows = check(args.notebooks, args.release)
            print(format_table(rows))
            bad = sum(r.violation for r in rows)
            tests = sum(r.grade_id != "-" for r in rows)
            print(f"\n{tests} autograded tests, {bad} violations")
            return 1 if bad else 0
        from course_render import render

        index = render(args.notebooks, args.out, profile=args.profile, executed=args.executed, timeout=args.timeout)
        print(index)
        return 0
    except CourseError as err:
        print(f"mkdlab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
