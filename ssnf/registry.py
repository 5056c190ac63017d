"""Name -> entry tables filled by a decorator: coupling blocks, dataset layouts, search spaces.

    BLOCKS = Registry("block")

    @BLOCKS.register("conv")
    class ConvBlock(nn.Module): ...

A ``Registry`` is a plain dict (``name in BLOCKS``, ``BLOCKS[name]``, ``sorted(BLOCKS)``); ``lookup`` turns
an unknown name into one line that lists the known ones. ``choices``: where a config ``Literal`` spells the
names (``config.Layout``), the only names ``register`` takes.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ssnf.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str, choices: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.choices = choices

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: record the decorated class or function under ``name`` (a name is taken once)."""

        if self.choices is not None and name not in self.choices:
            raise ValueError(f"{self.kind} {name!r} is not one of {', '.join(self.choices)}: add it to the config's "
                             "Literal type first")

        def deco(entry: T) -> T:
            if name in self and self[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = entry
            return entry

        return deco

    def lookup(self, name: str, what: str = "") -> T:
        """The entry called ``name``; an unknown name is a ``ConfigError`` naming ``what`` (e.g. the config key)."""
        if name not in self:
            raise ConfigError(f"{what + ': ' if what else ''}unknown {self.kind} {name!r}; "
                              f"known: {', '.join(sorted(self)) or 'none'}")
        return self[name]
