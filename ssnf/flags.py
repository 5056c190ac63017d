"""Command-line flags read from a dataclass field's type, so that a flag's type and choices are spelled once, in
the field (``ssnf`` commands: ``DataConfig`` / ``DemoSpec`` fields; ``tune_main.py``: ``SweepOptions``)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union


def value_kwargs(hint: Any) -> dict[str, Any]:
    """``argparse`` ``type`` (and ``choices``) for a field of type ``hint``: a ``Literal`` gives its values as the
    choices, ``list[str]`` a comma-separated list, ``X | None`` the flag of ``X``."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    if typing.get_origin(hint) is list:
        return {"type": comma_list}
    if typing.get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return {"type": hint}


def comma_list(text: str) -> list[str]:
    """``a,b,,c`` -> ``["a", "b", "c"]``."""
    return [part for part in text.split(",") if part]


__all__ = ["comma_list", "value_kwargs"]
