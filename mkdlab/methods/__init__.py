"""Distillation methods, registered by name (``get_method("kd")``); each is a small module on
:class:`~mkdlab.methods.base.Distiller`."""

from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import available_methods, get_method, register_method

__all__ = ["Batch", "Distiller", "StepOutput", "available_methods", "get_method", "register_method"]
