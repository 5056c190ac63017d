"""Where ssnf keeps files that outlive a run (weights today, feature caches later)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SSNF_CACHE_DIR"
FEATURES_ENV = "SSNF_FEATURES_DIR"


def cache_dir() -> Path:
    """Root of ssnf's cache: ``$SSNF_CACHE_DIR``, else ``~/.cache/ssnf``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ssnf"


def weights_dir() -> Path:
    """Folder of pretrained weight files: ``<cache>/weights``."""
    return cache_dir() / "weights"


def features_dir() -> Path:
    """Folder of cached backbone features: ``$SSNF_FEATURES_DIR``, else ``<cache>/features``."""
    env = os.environ.get(FEATURES_ENV)
    return Path(env).expanduser() if env else cache_dir() / "features"
