"""Load RepDistiller / CA-MKD / mdistiller checkpoints into zoo models.

Those repositories save ``{"model": state_dict, "epoch": …, "best_acc": …, "optimizer": …}``; other code uses
``"state_dict"`` or ``"net"``, or saves the bare state dict. Files are read with
``torch.load(weights_only=True)``, so a pickle that tries to run code is refused, and loaded with
``strict=True``; any mismatch is reported at once (missing and unexpected keys, shape mismatches).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mkdlab.storage import UnsafeCheckpointError, code_refusal

STATE_KEYS = ("model", "state_dict", "net")
#: prefixes added by ``nn.DataParallel`` / DDP and by ``torch.compile``.
PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5


def load_external_checkpoint(model: nn.Module, path_or_state: str | os.PathLike[str] | Mapping[str, Any]) -> dict:
    """Load a checkpoint file (or an already loaded checkpoint mapping) into ``model``.

    The state dict is taken from ``"model"``, ``"state_dict"`` or ``"net"``, or the mapping itself when all its
    values are tensors; ``module.`` / ``_orig_mod.`` prefixes are stripped. BatchNorm ``num_batches_tracked``
    buffers may be absent (checkpoints older than PyTorch 0.4.1); every other key must match in name and shape.

    Returns the remaining entries (``epoch``, ``best_acc``, ``optimizer``, …); one-element tensors become Python
    numbers. Raises ``ValueError`` naming the file, the model and the offending keys on any mismatch, and
    :class:`~mkdlab.storage.UnsafeCheckpointError` (a ``ValueError`` too) when the file holds pickled code.
    """
    if isinstance(path_or_state, Mapping):
        source, checkpoint = "<in-memory checkpoint>", path_or_state
    else:
        source = os.fspath(path_or_state)
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"{source}: {code_refusal(err)}") from err
    state, meta = _split(checkpoint, source)
    state = {_strip(key): value for key, value in state.items()}
    problems = _mismatches(model, state)
    if problems:
        raise ValueError(f"{source}: checkpoint does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return meta


def _split(checkpoint: Any, source: str) -> tuple[Mapping[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a loaded checkpoint."""
    if isinstance(checkpoint, Mapping):
        for key in STATE_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                meta = {k: _plain(v) for k, v in checkpoint.items() if k != key}
                return checkpoint[key], meta
        if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
            return checkpoint, {}
    raise ValueError(
        f"{source}: no state dict found; expected a mapping with one of {', '.join(map(repr, STATE_KEYS))} "
        "or a bare state dict of tensors"
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _mismatches(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Human-readable lists of missing keys, unexpected keys and shape mismatches (first few of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = []
    for key, value in state.items():
        if key not in expected:
            continue
        if not isinstance(value, Tensor):
            shapes.append(f"{key}: checkpoint holds a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            shapes.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:_SHOWN])}{more}")
    return problems
