"""A tiny detector trained for one epoch on the demo washers (64 px, random backbone): for tests that need a
trained, saved model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssnf.config import SSNFConfig, with_overrides
from ssnf.data.demo import DemoSpec, ensure_demo
from ssnf.training import TrainResult, train


def train_tiny(root: Path, n_train: int = 12, n_test_good: int = 3) -> tuple[SSNFConfig, Path, TrainResult]:
    """``(config, checkpoint path, result)`` of a one-epoch run under ``root`` (data, cache and run folders)."""
    ensure_demo(root / "data", ("washer",), DemoSpec(size=64, n_train=n_train, n_test_good=n_test_good,
                                                     n_per_defect=2, seed=0))
    cfg = with_overrides(
        SSNFConfig(),
        data={"root": str(root / "data"), "category": "washer", "image_size": 64, "val_fraction": 0.25},
        backbone={"pretrained": False},
        model={"hidden": 16, "couplings": 2, "heads": 2},
        train={"epochs": 1, "batch_size": 4},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSNF_CACHE_DIR", str(root / "cache"))
        result = train(cfg, out_dir=root / "run", progress=False)
    return cfg, root / "run" / "checkpoint.pt", result
