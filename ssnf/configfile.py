"""Config files: the one place YAML becomes a config tree and a config tree becomes YAML.

The library never reads YAML on its own: ``load_config`` is what its callers call (the ``ssnf`` commands,
``tune_main.py``, the benchmarks). It applies, in order: the defaults, the YAML file (nested sections or dotted
keys: a run's ``config.yaml`` and ``analysis select``'s ``best/<category>.yaml`` both work), ``--set key=value``
overrides (values read as YAML scalars), a command's own flags, the data root and category. ``save_config``
writes the file ``load_config`` reads back unchanged (``ssnf train``'s ``config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from ssnf.config import SSNFConfig, from_dict, merge, to_dict
from ssnf.errors import SSNFError
from ssnf.files import atomic_path


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``["loss.weight=0", ...]`` -> ``{"loss.weight": 0, ...}`` (values read as YAML scalars)."""
    overrides = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SSNFError(f"--set {item!r}: expected key=value, e.g. --set loss.weight=0")
        overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return overrides


def read_tree(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file); a bad file ends in one line."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SSNFError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SSNFError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SSNFError(f"config file {path} must hold a mapping of sections")
    return loaded or {}


def load_config(path: str | Path | None, sets: Sequence[str] = (), data_root: str | None = None,
                category: str | None = None, overrides: dict[str, Any] | None = None) -> SSNFConfig:
    """The config a run uses: defaults, then the file at ``path``, then ``sets``, then ``overrides`` (dotted keys:
    a command's own flags), then ``data_root`` and ``category`` (where given)."""
    tree = read_tree(path) if path else {}
    flat = {**parse_sets(sets), **(overrides or {})}
    if data_root is not None:
        flat["data.root"] = data_root
    if category is not None:
        flat["data.category"] = category
    return from_dict(SSNFConfig, merge(tree, flat))


def save_config(path: str | Path, cfg: SSNFConfig) -> Path:
    """Write ``cfg`` as the nested YAML ``load_config`` reads back (atomically: no half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


__all__ = ["load_config", "parse_sets", "read_tree", "save_config"]
