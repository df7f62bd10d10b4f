"""The trainer's run checkpoints: their format marker, version and strict loading into a module.

Writing and reading go through :mod:`mkdlab.storage` (atomic writes, ``weights_only`` loads).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mkdlab.storage import CheckpointError, load_safely

FORMAT = "mkdlab-checkpoint"
VERSION = 1


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
