"""The procedural demo data: MVTec layout, exact masks, deterministic, safe to re-run."""

from __future__ import annotations

import numpy as np
import pytest

from ssnf.config import DataConfig
from ssnf.data.demo import DEFECTS, RENDERERS, DemoSpec, ensure_demo, make_defect
from ssnf.data.io import read_image
from ssnf.data.layouts import ANOMALOUS, load_index

SMALL = DemoSpec(size=64, n_train=5, n_test_good=2, n_per_defect=2, seed=0)


@pytest.mark.parametrize("category", sorted(RENDERERS))
@pytest.mark.parametrize("defect", DEFECTS)
def test_defects_change_pixels_exactly_inside_their_mask(category, defect):
    rng = np.random.default_rng(5)
    for _ in range(5):
        image, fg = RENDERERS[category](rng, 128)
        out, mask = make_defect(rng, image, fg, defect)
        changed = np.abs(out - image).max(axis=2) > 1.5 / 255  # visible after 8-bit rounding
        assert mask.any()
        assert not (changed & ~mask).any(), "pixels changed outside the mask"
        assert changed[mask].mean() > 0.8, "most of the mask must really differ"
        assert not (mask & ~fg).any(), "defects stay on the object"


@pytest.mark.parametrize("category", sorted(RENDERERS))
def test_normal_images_vary_but_stay_in_range(category):
    rng = np.random.default_rng(0)
    a, _ = RENDERERS[category](rng, 64)
    b, _ = RENDERERS[category](rng, 64)
    assert a.shape == (64, 64, 3) and a.min() >= 0 and a.max() <= 1
    assert np.abs(a - b).mean() > 0.01


def test_demo_is_an_mvtec_dataset_and_is_deterministic(tmp_path):
    ensure_demo(tmp_path / "a", spec=SMALL)
    ensure_demo(tmp_path / "b", spec=SMALL)
    for category in RENDERERS:
        index = load_index(DataConfig(root=str(tmp_path / "a"), category=category))
        assert len(index.train) == 5
        assert sorted(index.defects) == sorted(DEFECTS)
        assert sum(s.label == ANOMALOUS for s in index.test) == 2 * len(DEFECTS)
        assert index.test_has_masks
        for s in index.test:
            twin = tmp_path / "b" / s.image.relative_to(tmp_path / "a")
            assert np.array_equal(read_image(s.image), read_image(twin))
    other = DemoSpec(**{**SMALL.__dict__, "seed": 1})
    ensure_demo(tmp_path / "c", ("weave",), other)
    assert not np.array_equal(read_image(tmp_path / "a/weave/train/good/000.png"),
                              read_image(tmp_path / "c/weave/train/good/000.png"))


def test_demo_is_reused_and_regenerated_when_its_spec_changes(tmp_path):
    ensure_demo(tmp_path, ("washer",), SMALL)
    first = (tmp_path / "washer/train/good/000.png").stat().st_mtime_ns
    ensure_demo(tmp_path, ("washer",), SMALL)
    assert (tmp_path / "washer/train/good/000.png").stat().st_mtime_ns == first
    smaller = DemoSpec(**{**SMALL.__dict__, "n_train": 3})
    ensure_demo(tmp_path, ("washer",), smaller)
    assert len(list((tmp_path / "washer/train/good").iterdir())) == 3  # old files gone
    assert not list(tmp_path.glob(".*.partial"))
