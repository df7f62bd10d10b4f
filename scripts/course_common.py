"""What the course commands share: the series' lessons in reading order and the user-error type."""

from __future__ import annotations

from pathlib import Path


class CourseError(Exception):
    """A mistake the user can fix (reported as ``mkdlab: error: …``, exit status 2)."""


def lessons(folder: Path) -> list[Path]:
    """The notebooks of a series folder, in reading order (their file names start with the lesson number)."""
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise CourseError(f"no notebooks NN_*.ipynb in {folder}: pass the series folder with --notebooks")
    return found
