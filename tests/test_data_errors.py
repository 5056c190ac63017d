"""Bad input ends in one clear error that names the path; nothing is skipped silently."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from ssnf.cli import main
from ssnf.config import DataConfig
from ssnf.data.dataset import ImageDataset
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.errors import DataError
from tests.helpers.fake_data import make_dagm, make_mvtec, write_mask


def _cfg(root, category="widget", **kw):
    return DataConfig(root=str(root), category=category, **kw)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_index(_cfg(tmp_path / "nope"))


def test_missing_category_lists_what_is_there(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(DataError, match=r"category 'gadget' not found .*found: widget"):
        load_index(_cfg(tmp_path, "gadget"))


def test_empty_train_split(tmp_path):
    make_mvtec(tmp_path)
    for p in (tmp_path / "widget" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"training folder .*train/good has no images"):
        load_index(_cfg(tmp_path))


def test_unknown_layout_shape(tmp_path):
    (tmp_path / "widget" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_index(_cfg(tmp_path))


def test_corrupt_image_is_named(tmp_path):
    make_mvtec(tmp_path)
    bad = tmp_path / "widget" / "test" / "good" / "001.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        load_index(_cfg(tmp_path))


def test_truncated_image_fails_at_decode_naming_the_file(tmp_path):
    make_mvtec(tmp_path)
    bad = tmp_path / "widget" / "train" / "good" / "002.png"
    bad.write_bytes(bad.read_bytes()[:120])  # header intact, pixels cut off
    index = load_index(_cfg(tmp_path))  # headers still read
    ds = ImageDataset(index.train, 32)
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        ds[[s.image for s in index.train].index(bad)]


def test_missing_mask_is_named(tmp_path):
    make_mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "dent" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for anomalous image .*dent/001.png: expected .*dent/001_mask.png"):
        load_index(_cfg(tmp_path))


def test_mask_of_another_size_is_named(tmp_path):
    make_mvtec(tmp_path)
    mask = tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png"
    write_mask(mask, hw=(20, 20), box=(1, 1, 5, 5))
    with pytest.raises(DataError, match=f"mask {mask} is 20x20 but its image is 48x40"):
        load_index(_cfg(tmp_path))


def test_unreadable_mask_is_named(tmp_path):
    make_mvtec(tmp_path)
    mask = tmp_path / "widget" / "ground_truth" / "crack" / "001_mask.png"
    mask.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=f"cannot read mask {mask}"):
        load_index(_cfg(tmp_path))


def test_dagm_missing_labels_and_missing_listed_image(tmp_path):
    make_dagm(tmp_path)
    labels = tmp_path / "Class1" / "Test" / "Label" / "Labels.txt"
    text = labels.read_text()
    labels.unlink()
    with pytest.raises(DataError, match=f"DAGM label file {labels} does not exist"):
        load_index(_cfg(tmp_path, "Class1"))
    labels.write_text(text)
    (tmp_path / "Class1" / "Test" / "2000.PNG").unlink()
    with pytest.raises(DataError, match=r"Labels.txt:2 lists .*2000.PNG, which does not exist"):
        load_index(_cfg(tmp_path, "Class1"))


def test_too_few_images_for_the_split(tmp_path):
    make_mvtec(tmp_path)
    index = load_index(_cfg(tmp_path))
    with pytest.raises(DataError, match="leave none to train on"):
        make_splits(index, _cfg(tmp_path, val_fraction=0.95))
    with pytest.raises(DataError, match="few_shot=50 asks for more"):
        make_splits(index, _cfg(tmp_path, few_shot=50))


def test_sixteen_bit_and_palette_images_are_read(tmp_path):
    make_mvtec(tmp_path)
    folder = tmp_path / "widget" / "train" / "good"
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(folder / "100.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).convert("P").save(folder / "101.png")
    index = load_index(_cfg(tmp_path))
    items = [ImageDataset(index.train, 32)[i] for i in range(len(index.train))]
    assert all(it["image"].shape == (3, 32, 32) for it in items)
    # 16-bit values are scaled to 8 bits (max 57570 / 65535), neither clipped nor truncated
    assert float(items[-2]["image"].max()) == pytest.approx(57570 / 65535, abs=0.01)
    assert float(items[-1]["image"].max()) == 0.0


def test_cli_reports_one_line_and_exit_status_2(tmp_path, capsys):
    code = main(["data", "summary", "--data-root", str(tmp_path / "missing"), "--category", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("ssnf: error: data root") and "missing" in err


def test_demo_never_overwrites_someone_elses_folder(tmp_path):
    from ssnf.data.demo import DemoSpec, ensure_demo

    make_mvtec(tmp_path, category="weave")
    with pytest.raises(DataError, match="is not ssnf demo data"):
        ensure_demo(tmp_path, ("weave",), DemoSpec(size=32, n_train=2, n_test_good=1, n_per_defect=1))
    assert (tmp_path / "weave" / "train" / "good" / "000.png").is_file()
    shutil.rmtree(tmp_path / "weave")
