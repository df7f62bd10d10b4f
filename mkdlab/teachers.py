"""The teacher pool: trained or imported teacher checkpoints with a manifest, shared by every experiment.

Multi-teacher papers distil from K networks of one architecture trained from different seeds (docs/methods.md §2).
The pool trains them once and keeps them under ``$MKDLAB_HOME/teachers`` (default ``~/.cache/mkdlab/teachers``):
one state-dict file per teacher and a ``manifest.json`` entry recording architecture, dataset, seed, epochs, test
accuracy and the file's sha256, which is verified at every load. Notebooks and the demo call
:meth:`TeacherPool.get_or_train`: load if present, else train.

The package ships a few teachers in ``mkdlab/assets/teachers/`` (:data:`SHIPPED_TEACHERS`: the demo's resnet20s,
rebuilt by ``scripts/train_shipped_teachers.py``, whose sidecar JSONs record how). They enter the pool through the
folder's own ``manifest.json``, sha256 and all, like any other entry: a changed file is refused. An entry of the
same name in ``$MKDLAB_HOME`` (a teacher the user trained) takes precedence; ``TeacherPool(shipped=None)`` leaves the
shipped ones out.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mkdlab.storage import load_safely, save_atomic, save_atomic_text

try:
    import fcntl
except ImportError:  # Windows: manifest updates are not locked
    fcntl = None  # type: ignore[assignment]
from mkdlab.models import create
from mkdlab.models.external import load_external_checkpoint

#: the folder of the teachers shipped inside the package, with their ``manifest.json`` and one sidecar JSON each.
SHIPPED_TEACHERS = Path(__file__).resolve().parent / "assets" / "teachers"
MANIFEST = "manifest.json"


class TeacherPoolError(RuntimeError):
    """A teacher is missing from the pool, or its file does not match the manifest."""


@dataclass(frozen=True)
class TeacherEntry:
    """One manifest row: what a stored teacher is and how to verify its file."""

    name: str
    arch: str
    dataset: str
    num_classes: int
    in_channels: int
    seed: int | None
    epochs: int | None
    top1: float | None
    sha256: str
    file: str
    source: str = "trained"
    created: str = ""


def default_home() -> Path:
    """``$MKDLAB_HOME`` if set, else ``~/.cache/mkdlab``."""
    return Path(os.environ.get("MKDLAB_HOME") or Path.home() / ".cache" / "mkdlab")


def entry_name(arch: str, dataset: str, seed: int, epochs: int, max_steps: int | None = None) -> str:
    """The pool name of a trained teacher, e.g. ``resnet20-fashion_mnist_mini-s0-e30`` (``-m20``: a 20-step cap)."""
    return f"{arch}-{dataset}-s{seed}-e{epochs}" + (f"-m{max_steps}" if max_steps is not None else "")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, TeacherEntry]:
    """The entries of the manifest ``path`` by name (none when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TeacherPoolError(f"{path} is not valid JSON ({err}); restore or delete it") from None
    return {row["name"]: TeacherEntry(**row) for row in rows}


def write_shipped_manifest(folder: Path = SHIPPED_TEACHERS) -> Path:
    """Rebuild ``folder/manifest.json`` from the ``entry`` of every sidecar ``<name>.json`` in ``folder``."""
    sidecars = sorted(p for p in folder.glob("*.json") if p.name != MANIFEST)
    rows = sorted((json.loads(p.read_text())["entry"] for p in sidecars), key=lambda row: row["name"])
    return save_atomic_text(json.dumps(rows, indent=2) + "\n", folder / MANIFEST)


class TeacherPool:
    """Teachers stored under ``home/teachers`` with a verified manifest, plus those shipped in ``shipped``."""

    def __init__(self, home: str | Path | None = None, shipped: Path | None = SHIPPED_TEACHERS) -> None:
        self.root = Path(home if home is not None else default_home()) / "teachers"
        self.manifest_path = self.root / MANIFEST
        self.shipped = shipped

    # -- manifest --------------------------------------------------------------------------------------------
    def entries(self) -> dict[str, TeacherEntry]:
        """Every entry by name: the shipped ones, overridden by the home manifest's."""
        shipped = read_manifest(self.shipped / MANIFEST) if self.shipped is not None else {}
        return {**shipped, **self._home_entries()}

    def _home_entries(self) -> dict[str, TeacherEntry]:
        return read_manifest(self.manifest_path)

    def path_of(self, name: str) -> Path:
        """The file of the entry ``name``: in the home pool, else in the shipped folder."""
        home = self._home_entries()
        if name in home or self.shipped is None:
            return self.root / home[name].file
        return self.shipped / self.entries()[name].file

    def list(self) -> list[TeacherEntry]:
        """Entries sorted by name."""
        return [entry for _, entry in sorted(self.entries().items())]

    def __contains__(self, name: str) -> bool:
        return name in self.entries()

    def _write_manifest(self, entries: dict[str, TeacherEntry]) -> None:
        save_atomic_text(json.dumps([asdict(e) for _, e in sorted(entries.items())], indent=2), self.manifest_path)

    # -- adding ----------------------------------------------------------------------------------------------
    def add(self, name: str, model: nn.Module, *, arch: str, dataset: str, num_classes: int, in_channels: int,
            seed: int | None, epochs: int | None, top1: float | None, source: str = "trained") -> TeacherEntry:
        """Store ``model``'s weights under ``name`` (replacing an older entry of that name)."""
        path = save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, self.root / f"{name}.pt")
        entry = TeacherEntry(name, arch, dataset, num_classes, in_channels, seed, epochs, top1, sha256_of(path),
                             path.name, source, time.strftime("%Y-%m-%dT%H:%M:%S"))
        with self._manifest_lock():
            entries = self._home_entries()
            entries[name] = entry
            self._write_manifest(entries)
        return entry

    @contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Serialise manifest updates between processes (notebooks and runs sharing one pool)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".manifest.lock").open("w") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def import_external(self, path: str | Path, *, arch: str, dataset: str, name: str | None = None,
                        num_classes: int = 100, in_channels: int = 3, top1: float | None = None) -> TeacherEntry:
        """Import a RepDistiller/mdistiller checkpoint (``{"model": state_dict, ...}``) into the pool."""
        model = create(arch, num_classes=num_classes, in_channels=in_channels)
        meta = load_external_checkpoint(model, path)
        if top1 is None:
            reported = meta.get("best_acc", meta.get("accuracy"))
            top1 = float(reported) if isinstance(reported, (int, float, torch.Tensor)) else None
        epoch = meta.get("epoch")
        return self.add(name or f"{arch}-{dataset}-{Path(path).stem}", model, arch=arch, dataset=dataset,
                        num_classes=num_classes, in_channels=in_channels, seed=None,
                        epochs=int(epoch) if isinstance(epoch, int) else None, top1=top1, source=f"imported:{path}")

    # -- loading ---------------------------------------------------------------------------------------------
    def load(self, name: str, device: str | torch.device = "cpu") -> nn.Module:
        """The teacher ``name`` in eval mode with frozen parameters, after checking its sha256."""
        entries = self.entries()
        if name not in entries:
            known = ", ".join(entries) or "none yet"
            raise TeacherPoolError(
                f"no teacher {name!r} in {self.root}; known: {known}. Train it with "
                f"`python -m mkdlab teachers train` or import one with `python -m mkdlab teachers import`"
            )
        entry = entries[name]
        path = self.path_of(name)
        if not path.exists():
            raise TeacherPoolError(f"teacher file {path} listed in the manifest is missing; retrain or re-import")
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise TeacherPoolError(
                f"teacher file {path} has sha256 {digest[:12]}…, the manifest records {entry.sha256[:12]}…: the file "
                f"changed or is corrupt. Delete it and retrain (or re-import) the teacher {name!r}"
            )
        model = create(entry.arch, num_classes=entry.num_classes, in_channels=entry.in_channels)
        model.load_state_dict(load_safely(path))
        return model.to(device).eval().requires_grad_(False)

    def get_or_train(self, arch: str, dataset: str, seed: int, epochs: int,
                     train: Callable[[str, str, int, int], tuple[nn.Module, float]],
                     device: str | torch.device = "cpu", max_steps: int | None = None,
                     **model_kwargs: Any) -> nn.Module:
        """Load the teacher (arch, dataset, seed, epochs) if present; else call ``train`` and store the result.

        ``train(arch, dataset, seed, epochs)`` returns ``(model, test_top1)``.
        """
        name = entry_name(arch, dataset, seed, epochs, max_steps)
        if name not in self:
            model, top1 = train(arch, dataset, seed, epochs)
            self.add(name, model, arch=arch, dataset=dataset, seed=seed, epochs=epochs, top1=top1,
                     num_classes=model_kwargs.get("num_classes", _num_classes(model)),
                     in_channels=model_kwargs.get("in_channels", _in_channels(model)))
        return self.load(name, device)


def _num_classes(model: nn.Module) -> int:
    return next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)).out_features


def _in_channels(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
