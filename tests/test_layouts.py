"""Every registered layout reads its fake dataset correctly, in its own spelling and by auto-detection."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from ssnf.config import DataConfig, Layout
from ssnf.data.dataset import ImageDataset
from ssnf.data.layouts import ANOMALOUS, LAYOUT_READERS, NORMAL, load_index
from tests.helpers.fake_data import HW, LAYOUT_MAKERS, make_dagm, make_mvtec


def test_every_registered_layout_has_a_fake_dataset():
    assert set(LAYOUT_READERS) == set(LAYOUT_MAKERS)


def test_the_layout_names_are_the_config_s_and_no_others():
    assert set(LAYOUT_READERS) == set(get_args(Layout)) - {"auto"}
    with pytest.raises(ValueError, match="layout 'coco' is not one of mvtec, btad, dagm, folder"):
        LAYOUT_READERS.register("coco")


@pytest.mark.parametrize("layout", sorted(LAYOUT_MAKERS))
@pytest.mark.parametrize("spelling", ["explicit", "auto"])
def test_layout_counts_masks_and_tensors(tmp_path, layout, spelling):
    expected = LAYOUT_MAKERS[layout](tmp_path)
    cfg = DataConfig(root=str(tmp_path), category=expected.category, layout=layout if spelling == "explicit" else "auto",
                     **expected.cfg)
    index = load_index(cfg)
    assert index.layout == layout
    assert len(index.train) == expected.train
    assert len(index.validation) == expected.validation
    assert sum(s.label == NORMAL for s in index.test) == expected.test_normal
    assert sum(s.label == ANOMALOUS for s in index.test) == expected.test_anomalous
    assert all(s.label == NORMAL and s.mask is None for s in index.train)
    assert index.test_has_masks
    # masks pair with their own image (same stem, modulo _mask/_label suffixes)
    for s in index.test:
        if s.label == ANOMALOUS:
            assert s.mask.stem.replace("_mask", "").replace("_label", "") == s.image.stem
    ds = ImageDataset(index.test, image_size=32)
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype.is_floating_point
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert item["mask"].shape == (1, 32, 32)
        assert set(np.unique(item["mask"].numpy())) <= {0.0, 1.0}
        assert (item["mask"].sum() > 0) == (item["label"] == 1)
        labels.append(int(item["label"]))
    assert labels == [s.label for s in index.test]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"])
def test_mvtec_any_image_extension_and_grey(tmp_path, ext):
    expected = make_mvtec(tmp_path, ext=ext, grey=True)
    index = load_index(DataConfig(root=str(tmp_path), category=expected.category))
    assert len(index.train) == expected.train and len(index.test) == 7
    item = ImageDataset(index.train, 32)[0]
    assert item["image"].shape == (3, 32, 32)
    # grey becomes three equal channels (WebP stores grey as lossy YUV: equal up to rounding)
    atol = 0.02 if ext == ".webp" else 0.0
    assert np.allclose(item["image"][0], item["image"][1], atol=atol)
    assert np.allclose(item["image"][1], item["image"][2], atol=atol)


def test_mvtec3d_validation_folder_and_native_rgb_gt_layout(tmp_path):
    expected = make_mvtec(tmp_path / "a", validation=4)
    index = load_index(DataConfig(root=str(tmp_path / "a"), category=expected.category))
    assert len(index.validation) == 4
    expected = make_mvtec(tmp_path / "b", validation=3, native_3d=True)
    index = load_index(DataConfig(root=str(tmp_path / "b"), category=expected.category))
    assert (len(index.train), len(index.validation), len(index.test)) == (8, 3, 7)
    assert all(s.image.parent.name == "rgb" for s in index.test)
    assert all(s.mask.parent.name == "gt" for s in index.test if s.label == ANOMALOUS)


def test_dagm_leaves_defective_training_images_out_and_says_so(tmp_path):
    make_dagm(tmp_path)
    index = load_index(DataConfig(root=str(tmp_path), category="Class1"))
    assert len(index.train) == 6
    assert any("2 defective images" in note for note in index.notes)
    assert "2 defective images" in index.summary()


def test_folder_layout_without_masks_gives_image_labels_only(tmp_path):
    cat = tmp_path / "parts"
    LAYOUT_MAKERS["folder"](tmp_path)
    index = load_index(DataConfig(root=str(tmp_path), category="parts", mask_dir=""))
    assert not index.test_has_masks
    assert all(s.mask is None for s in index.test)
    item = ImageDataset([s for s in index.test if s.label == ANOMALOUS], 32)[0]
    assert not bool(item["has_mask"])
    assert (cat / "good").is_dir()


def test_folder_layout_with_its_own_normal_test_folder(tmp_path):
    LAYOUT_MAKERS["folder"](tmp_path)
    from tests.helpers.fake_data import _images

    _images(tmp_path / "parts" / "good_test", 4, ".png", 9)
    index = load_index(DataConfig(root=str(tmp_path), category="parts", mask_dir="mask", normal_test_dir="good_test"))
    assert len(index.train) == 10
    assert sum(s.label == NORMAL for s in index.test) == 4


def test_masks_are_resized_with_nearest_neighbour_to_the_right_place(tmp_path):
    expected = make_mvtec(tmp_path)
    index = load_index(DataConfig(root=str(tmp_path), category=expected.category))
    sample = next(s for s in index.test if s.label == ANOMALOUS)
    mask = ImageDataset([sample], 24)[0]["mask"][0].numpy()
    # the fake box covers rows 5..14 of 40 and columns 5..19 of 48
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    assert abs(rows[0] - 5 * 24 / HW[0]) <= 1 and abs(rows[-1] + 1 - 15 * 24 / HW[0]) <= 1
    assert abs(cols[0] - 5 * 24 / HW[1]) <= 1 and abs(cols[-1] + 1 - 20 * 24 / HW[1]) <= 1
