"""The training engine: one loop (:class:`Trainer`), schedules, checkpoints, seeding and loggers."""

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
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "lr_factor",
    "resolve_device",
    "scale_milestones",
    "seed_everything",
]
