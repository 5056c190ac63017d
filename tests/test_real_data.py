"""The real categories at ../shared/data read as their README says (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest

from ssnf.config import DataConfig
from ssnf.data.dataset import ImageDataset
from ssnf.data.layouts import ANOMALOUS, load_index
from ssnf.data.splits import make_splits

pytestmark = pytest.mark.shared_data

README_COUNTS = {
    # category: train, validation, test good, {defect: count}
    "tire": (210, 29, 25, {"contamination": 28, "cut": 27, "hole": 27, "combined": 5}),
    "magnetic_tile": (400, 0, 120, {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 99}),
}


@pytest.mark.parametrize("category", sorted(README_COUNTS))
def test_real_category_matches_its_readme(shared_data, category):
    train, validation, good, defects = README_COUNTS[category]
    cfg = DataConfig(root=str(shared_data), category=category)
    index = load_index(cfg)  # opens every header and checks every mask size
    assert index.layout == "mvtec"
    assert (len(index.train), len(index.validation)) == (train, validation)
    assert sum(s.label == 0 for s in index.test) == good
    assert {d: sum(s.defect == d for s in index.test) for d in index.defects} == defects
    assert index.test_has_masks
    splits = make_splits(index, cfg)
    assert len(splits.val) == round(0.1 * train) + validation
    test_paths = {s.image for s in splits.test}
    assert not test_paths & {s.image for s in [*splits.train, *splits.val]}


def test_grey_jpegs_of_varied_size_become_rgb_tensors_with_aligned_masks(shared_data):
    index = load_index(DataConfig(root=str(shared_data), category="magnetic_tile"))
    anomalous = [s for s in index.test if s.label == ANOMALOUS][:6]
    ds = ImageDataset(anomalous, 128)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 128, 128)
        assert np.allclose(item["image"][0], item["image"][2])
        assert 0 < float(item["mask"].mean()) < 0.9
