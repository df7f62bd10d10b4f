"""Files written atomically and read safely: what every layer that stores state uses.

Writing: the content goes to a temporary file in the same directory, is flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), so a crash during a save leaves the previous file intact.
Reading: ``torch.load(..., weights_only=True)`` only rebuilds tensors and plain containers, so a crafted file
cannot run code; a corrupt, foreign or code-carrying file gives a :class:`CheckpointError` that names the file and
says what is wrong.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """A file refused because it holds pickled code (:func:`code_refusal`); nothing in it ran."""


def _replace_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temporary file in its folder, flushed to disk, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    return _replace_atomically(path, lambda handle: torch.save(obj, handle))


def save_atomic_text(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file and an atomic rename."""
    return _replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def code_refusal(err: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to retry unsafely.

    Names the object the pickle asks for (``GLOBAL posix.system``) when torch's message says which.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" (it asks for {found.group(1)})" if found else ""
    return (f"the file contains pickled code{what}, not only tensors and plain data, so it was refused and nothing "
            f"in it was run (read with torch.load(weights_only=True)). If you trust its source, re-save the weights "
            f"alone where it was made: torch.save(model.state_dict(), FILE)")


def load_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"refusing to load {path}: {code_refusal(err)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"delete it, or resume from an older checkpoint"
        ) from None
