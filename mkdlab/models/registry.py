"""Name → model factory registry (``@register_model("resnet8")``) and :func:`create`.

A factory takes ``(num_classes, in_channels)`` and returns a :class:`~mkdlab.models.common.ZooModel`. Names are
case-sensitive and follow RepDistiller's ``model_dict`` (``resnet32x4``, ``wrn_40_2``, ``ShuffleV1``, …); aliases
(``mobile_half``, ``vgg8_bn``, …) resolve to the same factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_MODELS: dict[str, Factory] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator registering a model factory ``f(num_classes=100, in_channels=3)`` under ``name`` and ``aliases``."""

    def decorate(factory: F) -> F:
        for key in (name, *aliases):
            if key in _MODELS or key in _ALIASES:
                raise ValueError(f"model {key!r} is registered twice")
        _MODELS[name] = factory
        _ALIASES.update(dict.fromkeys(aliases, name))
        return factory

    return decorate


def available_models(include_aliases: bool = False) -> list[str]:
    """Registered model names in zoo order (ResNets, WRNs, VGGs, MobileNetV2, ShuffleNets, ResNet-18).

    With ``include_aliases=True`` the aliases follow the canonical names.
    """
    _import_all()
    names = list(_MODELS)
    return names + list(_ALIASES) if include_aliases else names


def canonical_name(name: str) -> str:
    """Resolve an alias to its canonical name; an unknown name raises ``ValueError`` listing the valid ones."""
    _import_all()
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    valid = ", ".join(available_models(include_aliases=True))
    raise ValueError(f"unknown model {name!r}; choose one of: {valid}")


def create(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    ``in_channels`` changes only the first convolution (1 for Fashion-MNIST padded to 32×32).
    """
    return _MODELS[canonical_name(name)](num_classes=num_classes, in_channels=in_channels)


def _import_all() -> None:
    import mkdlab.models  # noqa: F401  (importing the package registers every family module)
