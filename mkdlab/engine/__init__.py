"""The training engine: one loop (:class:`Trainer`), schedules, checkpoints, seeding and loggers."""

from mkdlab.engine.device import resolve_device
from mkdlab.engine.evaluation import accuracy_counts, evaluate_model
from mkdlab.engine.schedule import lr_factor, scale_milestones
from mkdlab.engine.seeding import seed_everything
from mkdlab.engine.trainer import (
    FitResult,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
)

__all__ = [
    "FitResult",
    "accuracy_counts",
    "evaluate_model",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "lr_factor",
    "resolve_device",
    "scale_milestones",
    "seed_everything",
]
