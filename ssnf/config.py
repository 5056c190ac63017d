"""The typed configuration tree: one source of truth for every knob.

Each section is a dataclass. ``to_dict``/``from_dict`` convert a section (or a tree of them) to plain
Python values and back with type checks, and ``flatten``/``unflatten`` turn a tree into dotted keys
(``data.image_size``) and back, which is the spelling of Parquet columns and ``--set key=value``.
The library never reads YAML itself; the CLI does, and hands the result to ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ssnf.errors import ConfigError

T = TypeVar("T")

LAYOUTS = ("auto", "mvtec", "btad", "dagm", "folder")


@dataclass
class DataConfig:
    """Which images to read and how to split them."""

    root: str = "demo_data"
    category: str = "weave"
    layout: str = "auto"  # auto | mvtec | btad | dagm | folder
    image_size: int = 256  # square side in pixels the images and masks are resized to
    val_fraction: float = 0.1  # share of normal training images held out as validation normals
    few_shot: int = 0  # keep this many normal training images (0: all)
    seed: int = 0  # drives the validation hold-out and the few-shot choice
    # "folder" layout only: folders under <root>/<category> (absolute paths also work).
    normal_dir: str = "good"
    abnormal_dir: str = "defect"
    mask_dir: str = ""  # empty: the abnormal images have no masks (no pixel metrics)
    normal_test_dir: str = ""  # empty: hold out normal_test_fraction of normal_dir for testing
    normal_test_fraction: float = 0.2

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"data.layout={self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.image_size < 32:
            raise ConfigError(f"data.image_size={self.image_size} is too small (32 pixels at least)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must lie in [0, 1)")
        if self.few_shot < 0:
            raise ConfigError(f"data.few_shot={self.few_shot} must be 0 (all) or a positive count")
        if not 0.0 < self.normal_test_fraction < 1.0:
            raise ConfigError(f"data.normal_test_fraction={self.normal_test_fraction} must lie in (0, 1)")


@dataclass
class BackboneConfig:
    """The frozen CNN whose features the flow models."""

    name: str = "mobilenetv2_100"  # any timm model with features_only support
    strides: tuple[int, ...] = (4, 8, 16)  # feature levels, by their stride w.r.t. the input
    weights: str = ""  # a weights file; empty: ssnf's cache, then timm's hub when online
    pretrained: bool = True  # False: random weights (tests, ablations)

    def validate(self) -> None:
        if not self.strides:
            raise ConfigError("backbone.strides is empty: name at least one feature stride, e.g. 8")
        if list(self.strides) != sorted(set(self.strides)):
            raise ConfigError(f"backbone.strides={self.strides} must be increasing and distinct")


@dataclass
class FoundationConfig:
    """The sections the foundation uses; the detector's config extends this tree."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


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
