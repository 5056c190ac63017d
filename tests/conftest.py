"""Shared fixtures: where the real data is, and whether the offline weights are cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.loopback import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
# Every Ray process a test starts stays on loopback and quiet, whichever test starts it first.
os.environ.update(QUIET_ENV)


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


# The sweeps' tests (local Ray and loopback clusters): tiny demo data, 64 px, a random backbone, no weights.
SWEEP_SETS = {"data.image_size": 64, "data.val_fraction": 0.25, "backbone.pretrained": False, "train.batch_size": 4}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Demo categories ``washer`` and ``weave`` (64 px, 12 training images) in the MVTec layout."""
    from ssnf.data.demo import DemoSpec, ensure_demo

    root = tmp_path_factory.mktemp("sweepdemo")
    ensure_demo(root, ("washer", "weave"), DemoSpec(size=64, n_train=12, n_test_good=3, n_per_defect=2, seed=0))
    return root


# -- parallel workers (pytest-xdist: `make test` runs `-n auto`) --------------------------------------------------
# The modules marked `ray_cluster` start Ray (a local session, or a loopback cluster of several nodes): each is one
# unit of work, run by one worker one test at a time, and they are handed out first (they are the longest). Every
# other module is a unit of its own (its module-scoped fixtures, e.g. a trained detector, are built once). Each
# worker's torch runs on one thread: the workers are the parallelism. A local session is always a new one
# (`address="local"`), so it never joins another worker's loopback cluster.
# (xdist's own `--dist loadgroup` cannot be used: it renames node ids, which pytest 9 no longer allows.)
RAY_MODULES = ("tests/test_cluster.py", "tests/test_sweep.py")


def pytest_collection_modifyitems(config, items) -> None:
    marked = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("ray_cluster")}
    if marked - set(RAY_MODULES):
        raise pytest.UsageError(f"add {sorted(marked - set(RAY_MODULES))} to RAY_MODULES in tests/conftest.py")
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in RAY_MODULES)  # stable: Ray modules first


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        import torch

        torch.set_num_threads(1)


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # plain pytest, no workers: nothing to schedule
    pass
else:
    class ModuleScheduling(LoadScopeScheduling):
        """xdist's load-by-module scheduling, units handed out in collection order (the Ray modules first)."""

        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::")[0]

    def pytest_xdist_make_scheduler(config, log):
        config.option.loadscopereorder = False
        return ModuleScheduling(config, log)
