"""Small fake datasets written to disk in each real folder layout (anomalib's tests/helpers idea).

Each ``make_*`` writes a category and returns ``Expected`` counts, so one test can be parametrized
over every registered layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HW = (40, 48)  # height, width: not square, to catch transposed sizes


@dataclass
class Expected:
    category: str
    train: int
    validation: int
    test_normal: int
    test_anomalous: int
    cfg: dict = field(default_factory=dict)  # DataConfig fields the layout needs


def write_image(path: Path, seed: int, hw: tuple[int, int] = HW, grey: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    shape = hw if grey else (*hw, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path.with_suffix(path.suffix))
    return path


def write_mask(path: Path, hw: tuple[int, int] = HW, box: tuple[int, int, int, int] = (5, 5, 15, 20)) -> Path:
    mask = np.zeros(hw, dtype=np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return path


def _images(folder: Path, n: int, ext: str, seed: int, grey: bool = False, names: str = "{:03d}") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / (names.format(i) + ext), seed * 1000 + i, grey=grey) for i in range(n)]


def make_mvtec(root: Path, category: str = "widget", ext: str = ".png", grey: bool = False,
               validation: int = 0, native_3d: bool = False) -> Expected:
    cat = root / category
    sub = "rgb" if native_3d else ""
    _images(cat / "train" / "good" / sub, 8, ext, 1, grey)
    if validation:
        _images(cat / "validation" / "good" / sub, validation, ext, 2, grey)
    _images(cat / "test" / "good" / sub, 3, ext, 3, grey)
    for k, defect in enumerate(("crack", "dent")):
        for img in _images(cat / "test" / defect / sub, 2, ext, 4 + k, grey):
            if native_3d:
                gt = cat / "test" / defect / "gt"
                gt.mkdir(parents=True, exist_ok=True)
                write_mask(gt / (img.stem + ".png"))
            else:
                gt = cat / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                write_mask(gt / (img.stem + "_mask.png"))
    return Expected(category, 8, validation, 3, 4)


def make_btad(root: Path, category: str = "01", ext: str = ".bmp", mask_ext: str = ".png") -> Expected:
    cat = root / category
    _images(cat / "train" / "ok", 7, ext, 1)
    _images(cat / "test" / "ok", 2, ext, 2)
    gt = cat / "ground_truth" / "ko"
    gt.mkdir(parents=True)
    for img in _images(cat / "test" / "ko", 3, ext, 3):
        write_mask(gt / (img.stem + mask_ext))
    return Expected(category, 7, 0, 2, 3)


def make_dagm(root: Path, category: str = "Class1") -> Expected:
    cat = root / category
    for split, n_ok, n_bad, seed in (("Train", 6, 2, 1), ("Test", 3, 3, 2)):
        folder = cat / split
        (folder / "Label").mkdir(parents=True)
        lines = ["1"]
        for i in range(n_ok + n_bad):
            name = f"{seed}{i:03d}.PNG"
            write_image(folder / name, seed * 100 + i, grey=True)
            if i < n_ok:
                lines.append(f"{i + 1}\t0\t{name}\t0\t")
            else:
                mask = f"{seed}{i:03d}_label.PNG"
                write_mask(folder / "Label" / mask)
                lines.append(f"{i + 1}\t1\t{name}\t1\t{mask}")
        (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return Expected(category, 6, 0, 3, 3)


def make_folder(root: Path, category: str = "parts") -> Expected:
    cat = root / category
    _images(cat / "good", 10, ".jpg", 1)
    (cat / "mask").mkdir(parents=True)
    for img in _images(cat / "defect", 3, ".png", 2):
        write_mask(cat / "mask" / (img.stem + "_mask.png"))
    # data.normal_test_fraction = 0.2 of 10 normals are held out for testing
    return Expected(category, 8, 0, 2, 3, {"mask_dir": "mask"})


LAYOUT_MAKERS = {"mvtec": make_mvtec, "btad": make_btad, "dagm": make_dagm, "folder": make_folder}
