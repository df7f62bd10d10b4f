"""The training engine: one loop (:class:`Trainer`), schedules, checkpoints, seeding and loggers."""

from mkdlab.engine.checkpoint import CheckpointError, load_safely, save_atomic
from mkdlab.engine.schedule import lr_factor, scale_milestones
from mkdlab.engine.seeding import seed_everything
from mkdlab.engine.trainer import (
    FitResult,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    resolve_device,
)

__all__ = [
    "CheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "load_safely",
    "lr_factor",
    "resolve_device",
    "save_atomic",
    "scale_milestones",
    "seed_everything",
]
