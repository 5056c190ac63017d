"""A tree of config dataclasses to plain values and back: the conversions ``ssnf.config`` exports.

``to_dict``/``from_dict`` convert a section (or a tree of them) to plain Python values and back with type
checks (a ``Literal`` field takes one of its choices only: ``check_choices``, which every section's
``validate`` calls too), ``flatten``/``unflatten`` turn a tree into dotted keys (``data.image_size``) and back,
``merge`` applies dotted overrides, ``with_overrides`` copies a tree with some fields replaced. Nothing here
knows the sections: they are ``ssnf.config``'s.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, TypeVar, get_args

from ssnf.errors import ConfigError

T = TypeVar("T")


def check_choices(section: Any, name: str) -> None:
    """Refuse, in one line, a field of the dataclass ``section`` (config section ``name``) that is not one of
    its ``Literal`` type's choices."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        _check_choice(hints[f.name], getattr(section, f.name), f"{name}.{f.name}")


def _check_choice(tp: Any, value: Any, key: str) -> None:
    if typing.get_origin(tp) is Literal and value not in get_args(tp):
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(get_args(tp))}")


def with_overrides(cfg: T, **sections: dict[str, Any]) -> T:
    """``with_overrides(cfg, loss={"weight": 0})``: a copy with some fields of some sections replaced."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    )


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass tree as nested plain values (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], _prefix: str = "") -> T:
    """Build ``cls`` from nested plain values; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {_prefix + unknown[0]!r}; known: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, f"{_prefix}{name}") for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        value = _coerce(type(get_args(tp)[0]), value, key)
        _check_choice(tp, value, key)
        return value
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a bug in a config class


def merge(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``tree`` (nested or dotted) with dotted-key ``overrides`` applied (``{"loss.weight": 0}``)."""
    return unflatten({**flatten(tree), **overrides})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"data.image_size": 256, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten``."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {dotted!r} nests under a value that is not a section")
        node[leaf] = value
    return tree
