"""Atomic, safely loaded checkpoints.

Writing: the state goes to a temporary file in the same directory, is flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), so a crash during a save leaves the previous checkpoint
intact. Reading: ``torch.load(..., weights_only=True)`` only rebuilds tensors and plain containers, so a crafted
file cannot run code; a corrupt or foreign file gives a :class:`CheckpointError` that names the file and says what
is wrong.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

FORMAT = "mkdlab-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


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


def load_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain data, which could run code "
            f"({str(err).splitlines()[0]}). Only load checkpoints you trust, and re-save them as state dicts."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"delete it, or resume from an older checkpoint"
        ) from None


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by the trainer and check its format marker."""
    state = load_safely(path)
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mkdlab training checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this mkdlab reads {VERSION}")
    return dict(state)


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path,
                      skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``, refusing missing or unexpected keys and shape mismatches.

    Keys starting with one of ``skip_prefixes`` are ignored on both sides (e.g. frozen teachers, which are not
    stored in run checkpoints). The error names ``source`` and the first offending keys.
    """
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(skip_prefixes)}
    given = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(given)) if given[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_first(shapes)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not match the {type(module).__name__} being loaded: " + "; ".join(problems)
            + ". Was it written for another model, method or config?"
        )
    module.load_state_dict(given, strict=False)


def _first(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")
