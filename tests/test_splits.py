"""Validation is carved from normal training images only, reproducibly, and never touches the test set."""

from __future__ import annotations

import pytest

from ssnf.config import DataConfig
from ssnf.data.layouts import load_index
from ssnf.data.splits import few_shot, holdout, make_splits
from ssnf.errors import DataError
from tests.helpers.fake_data import LAYOUT_MAKERS, _images, make_mvtec


def _paths(samples):
    return [s.image for s in samples]


@pytest.mark.parametrize("layout", sorted(LAYOUT_MAKERS))
def test_splits_are_disjoint_and_validation_is_normal(tmp_path, layout):
    expected = LAYOUT_MAKERS[layout](tmp_path)
    cfg = DataConfig(root=str(tmp_path), category=expected.category, val_fraction=0.3, **expected.cfg)
    index = load_index(cfg)
    splits = make_splits(index, cfg)
    train, val, test = set(_paths(splits.train)), set(_paths(splits.val)), set(_paths(splits.test))
    assert not train & val and not train & test and not val & test
    assert all(s.label == 0 for s in splits.val)
    assert len(splits.val) == round(0.3 * expected.train) + expected.validation
    assert len(splits.train) + len(splits.val) == expected.train + expected.validation
    assert set(_paths(splits.val)) - set(_paths(index.validation)) <= set(_paths(index.train))


def test_holdout_is_seeded(tmp_path):
    make_mvtec(tmp_path)
    _images(tmp_path / "widget" / "train" / "good", 40, ".png", 7, names="x{:03d}")
    index = load_index(DataConfig(root=str(tmp_path), category="widget"))
    a = holdout(index.train, 0.25, seed=0)[1]
    b = holdout(index.train, 0.25, seed=0)[1]
    c = holdout(index.train, 0.25, seed=1)[1]
    assert _paths(a) == _paths(b)
    assert _paths(a) != _paths(c)
    assert len(a) == round(0.25 * len(index.train))


def test_few_shot_keeps_k_seeded_and_leaves_validation_unchanged(tmp_path):
    make_mvtec(tmp_path)
    _images(tmp_path / "widget" / "train" / "good", 30, ".png", 7, names="x{:03d}")
    base = DataConfig(root=str(tmp_path), category="widget", val_fraction=0.2, seed=3)
    index = load_index(base)
    full = make_splits(index, base)
    shot = make_splits(index, DataConfig(**{**base.__dict__, "few_shot": 5}))
    assert len(shot.train) == 5
    assert set(_paths(shot.train)) <= set(_paths(full.train))
    assert _paths(shot.val) == _paths(full.val)
    again = make_splits(index, DataConfig(**{**base.__dict__, "few_shot": 5}))
    other = make_splits(index, DataConfig(**{**base.__dict__, "few_shot": 5, "seed": 4}))
    assert _paths(again.train) == _paths(shot.train)
    assert _paths(other.train) != _paths(shot.train)
    assert few_shot(index.train, 0, 0) == index.train


def test_a_training_image_that_is_also_a_test_image_is_refused(tmp_path):
    LAYOUT_MAKERS["folder"](tmp_path)
    cfg = DataConfig(root=str(tmp_path), category="parts", mask_dir="mask", normal_test_dir="good")
    with pytest.raises(DataError, match="is both a training/validation image and a test image"):
        make_splits(load_index(cfg), cfg)
