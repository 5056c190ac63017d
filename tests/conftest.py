"""Shared fixtures: where the real data is, and whether the offline weights are cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("SSNF_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "tire").is_dir() or not (root / "magnetic_tile").is_dir():
        pytest.skip(f"real datasets not found at {root} (set SSNF_SHARED_DATA); this machine has no ../shared")
    return root


def require_weights(name: str) -> None:
    from ssnf.backbones.weights import cached_file

    if cached_file(name) is None:
        pytest.skip(f"{name} weights are not cached: run `ssnf weights fetch {name}` (make test does)")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """An empty ssnf cache for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SSNF_CACHE_DIR", str(cache))
    return cache
