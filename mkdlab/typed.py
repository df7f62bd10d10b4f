"""Strict conversion of plain YAML/JSON data into typed dataclasses.

Every config in mkdlab is a dataclass. :func:`from_dict` builds one from a mapping and refuses, with a message that
names the valid choices, any unknown key, missing required key or value of the wrong type. Supported field types:
``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``Literal[...]``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]``, ``Any`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value, key or name is not valid; the message says what is and what to use instead."""


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, checking every key and type.

    ``where`` is the dotted path of ``data`` inside the whole config, used in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_path(where, unknown[0])}: unknown key; valid keys of {where or cls.__name__}: {', '.join(fields)}"
        )
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], _path(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_path(where, name)}: required key is missing")
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a (nested) dataclass, suitable for YAML/JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type ``tp`` and return it converted (nested dataclasses are built)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            value = "on" if value else "off"  # YAML 1.1 reads on/off (and yes/no) as booleans
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not valid; choose one of: {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [convert(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        value_type = args[1] if args else Any
        return {str(k): convert(value_type, v, _path(where, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "5e-4" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
