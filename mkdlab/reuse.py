"""Finished runs reused: "load if present, else train" for the notebooks' student runs.

:func:`run_or_load` trains a config as :func:`~mkdlab.experiment.run_experiment` does, unless the run directory
already holds a finished run of the very same config (the checkpoint's recorded config, every key, equals this
one): then the student, the method's state, the history and the recorded extras are read back, which takes
seconds. An interrupted run of the same config resumes from its checkpoint; a run of another config in that
directory is trained again from scratch. ``MKDLAB_REUSE_RUNS=0`` turns reuse off (the notebooks' test run does,
so that it always trains).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mkdlab.config import ExperimentConfig
from mkdlab.engine.checkpoint import load_run_checkpoint
from mkdlab.engine.loggers import completes_the_run
from mkdlab.engine.trainer import LAST, FitResult
from mkdlab.experiment import run_experiment, teachers_for
from mkdlab.methods.base import Distiller
from mkdlab.storage import CheckpointError, load_safely, save_atomic_text
from mkdlab.teachers import TeacherPool
from mkdlab.typed import to_dict


def reuse_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether finished runs are reused (``MKDLAB_REUSE_RUNS`` unset or not ``0``)."""
    env = os.environ if environ is None else environ
    return env.get("MKDLAB_REUSE_RUNS", "1").strip() != "0"


def stored_run(config: ExperimentConfig) -> dict[str, Any] | None:
    """The checkpoint in ``config``'s run directory if it was written for exactly this config, else ``None``."""
    path = config.run_dir() / LAST
    if not path.exists():
        return None
    try:
        checkpoint = load_run_checkpoint(path)
    except CheckpointError:
        return None
    trained = dataclasses.replace(config, teachers=teachers_for(config.method.name, config.teachers))
    return checkpoint if checkpoint.get("config") == to_dict(trained) else None


def is_finished(checkpoint: dict[str, Any], config: ExperimentConfig) -> bool:
    """Whether ``checkpoint`` is the end of the run (the last epoch, or the step budget, completed)."""
    history = checkpoint.get("history") or []
    if not history or checkpoint.get("step_in_epoch"):
        return False
    return completes_the_run(history[-1], config.train)


#: written into a run's ``extras/`` folder once a run that recorded its extras has finished.
EXTRAS_MARKER = "recorded"


def recorded_extras(run_dir: Path, epochs: int) -> list[dict[str, Any]] | None:
    """The per-epoch extras a finished run recorded (``extras/epoch_NNN.pt``; none for a method without extras),
    or ``None`` if it did not record them."""
    folder = run_dir / "extras"
    if not (folder / EXTRAS_MARKER).exists():
        return None
    paths = [folder / f"epoch_{epoch:03d}.pt" for epoch in range(1, epochs + 1)]
    return [load_safely(path) for path in paths if path.exists()]


def _train(config: ExperimentConfig, pool: TeacherPool | None, verbose: bool, record_extras: bool,
           resume: bool) -> tuple[FitResult, Distiller]:
    marker = config.run_dir() / "extras" / EXTRAS_MARKER
    marker.unlink(missing_ok=True)
    outcome = run_experiment(config, pool=pool, resume=resume, verbose=verbose, record_extras=record_extras)
    if record_extras:
        save_atomic_text("", marker)
    return outcome


def run_or_load(config: ExperimentConfig, *, pool: TeacherPool | None = None, verbose: bool = False,
                record_extras: bool = False) -> tuple[FitResult, Distiller]:
    """The finished run of ``config`` read back if present (and :func:`reuse_enabled`), else trained.

    A reused result's ``wall_time_s`` is the training time its epochs recorded, so tables show what the run
    cost, not the seconds of reading it back. With ``record_extras`` a run is only reused if it recorded extras.
    """
    checkpoint = stored_run(config) if reuse_enabled() else None
    if checkpoint is None:
        return _train(config, pool, verbose, record_extras, resume=False)
    if not is_finished(checkpoint, config):
        return _train(config, pool, verbose, record_extras, resume=True)
    history = checkpoint["history"]
    extras = recorded_extras(config.run_dir(), len(history)) if record_extras else []
    if extras is None:
        return _train(config, pool, verbose, record_extras, resume=False)
    result, method = run_experiment(config, pool=pool, resume=True, verbose=False)
    wall_time = sum(row.get("epoch_time_s", 0.0) for row in history)
    return dataclasses.replace(result, wall_time_s=wall_time, extras=extras), method
