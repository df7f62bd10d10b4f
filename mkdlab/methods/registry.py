"""Name → method class registry (``@register_method("kd")``)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mkdlab.methods.base import Distiller

_METHODS: dict[str, type[Distiller]] = {}
M = TypeVar("M", bound="type[Distiller]")


def register_method(name: str):
    """Class decorator registering a :class:`~mkdlab.methods.base.Distiller` under ``name``."""

    def decorate(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    """Every registered method name, sorted."""
    _import_all()
    return sorted(_METHODS)


def get_method(name: str) -> type[Distiller]:
    """The method class registered as ``name``; an unknown name lists the valid ones."""
    _import_all()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(_METHODS))}") from None


def _import_all() -> None:
    """Import every module of :mod:`mkdlab.methods`: each registers its methods when imported."""
    import mkdlab.methods

    for module in pkgutil.iter_modules(mkdlab.methods.__path__):
        importlib.import_module(f"mkdlab.methods.{module.name}")
