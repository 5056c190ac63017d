"""Dataset layouts users bring, read into one index of samples.

A layout reader is ``reader(category_dir, cfg) -> DatasetIndex`` registered with ``@register_layout``.
Readers list files and pair images with masks; ``load_index`` then checks every header and mask
size once, so a bad file fails before any training starts. Nothing is skipped silently: what a
reader leaves out on purpose is written to ``DatasetIndex.notes``.

Layouts:
- ``mvtec``: ``train/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``; MVTec 3D-AD
  adds ``validation/good``, and its native release (``<split>/<defect>/rgb`` with masks in ``gt``) works too.
- ``btad``: ``train/ok``, ``test/ok|ko``, ``ground_truth/ko/<stem>.png|bmp``.
- ``dagm``: DAGM 2007 ``ClassN/Train|Test`` with ``Label/Labels.txt`` and ``Label/<stem>_label.PNG``.
- ``folder``: a folder of normal images, one of abnormal images, optionally one of masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, get_args

import numpy as np

from ssnf.config import DataConfig, Layout
from ssnf.data.io import IMAGE_EXTENSIONS, image_hw, list_images, open_mask
from ssnf.errors import DataError
from ssnf.registry import Registry

NORMAL = 0
ANOMALOUS = 1


@dataclass(frozen=True)
class Sample:
    """One image: where it is, whether it is anomalous, and its mask if it has one."""

    image: Path
    label: int  # 0 normal, 1 anomalous
    mask: Path | None = None  # None: normal (empty mask), or anomalous without annotation
    defect: str = "good"


@dataclass
class DatasetIndex:
    """Every sample of one category, by split."""

    layout: str
    category: str
    root: Path  # the category folder
    train: list[Sample]  # normal training images
    test: list[Sample]
    validation: list[Sample] = field(default_factory=list)  # normal validation images the layout ships
    notes: list[str] = field(default_factory=list)

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.label == ANOMALOUS})

    @property
    def test_has_masks(self) -> bool:
        anomalous = [s for s in self.test if s.label == ANOMALOUS]
        return bool(anomalous) and all(s.mask is not None for s in anomalous)

    def summary(self) -> str:
        good = sum(s.label == NORMAL for s in self.test)
        per_defect = ", ".join(
            f"{d} {sum(s.defect == d for s in self.test)}" for d in self.defects
        ) or "none"
        lines = [
            f"{self.category} ({self.layout} layout, {self.root})",
            f"  train: {len(self.train)} normal" + (f"; validation: {len(self.validation)} normal" if self.validation else ""),
            f"  test: {good} normal, {len(self.test) - good} anomalous ({per_defect}); masks: {'yes' if self.test_has_masks else 'no'}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


LayoutReader = Callable[[Path, DataConfig], DatasetIndex]
# a reader per name of config.Layout but auto (detect_layout picks one)
LAYOUT_READERS: Registry[LayoutReader] = Registry("layout", tuple(n for n in get_args(Layout) if n != "auto"))
register_layout = LAYOUT_READERS.register


def load_index(cfg: DataConfig, verify: bool = True) -> DatasetIndex:
    """Read the category of ``cfg`` in its layout, then check every image header and mask size."""
    cfg.validate()
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    cat_dir = root / cfg.category
    if not cat_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(f"category {cfg.category!r} not found in {root} (found: {', '.join(found) or 'nothing'})")
    layout = detect_layout(cat_dir, cfg) if cfg.layout == "auto" else cfg.layout
    index = LAYOUT_READERS[layout](cat_dir, cfg)
    if not index.train:
        raise DataError(f"no normal training images in {cat_dir} ({layout} layout)")
    if verify:
        verify_index(index)
    return index


def detect_layout(cat_dir: Path, cfg: DataConfig) -> str:
    if (cat_dir / "train" / "good").is_dir():
        return "mvtec"
    if (cat_dir / "train" / "ok").is_dir():
        return "btad"
    if (cat_dir / "Train").is_dir() and (cat_dir / "Train" / "Label").is_dir():
        return "dagm"
    if (cat_dir / cfg.normal_dir).is_dir():
        return "folder"
    raise DataError(
        f"cannot tell the layout of {cat_dir}: expected train/good (mvtec), train/ok (btad), "
        f"Train/Label (dagm) or {cfg.normal_dir}/ (folder); set data.layout"
    )


def verify_index(index: DatasetIndex) -> None:
    """Open every image header and every mask: unreadable files and mask/image size mismatches fail here."""
    for sample in [*index.train, *index.validation, *index.test]:
        hw = image_hw(sample.image)
        if sample.mask is not None:
            open_mask(sample.mask, hw)


def _required_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist")
    images = list_images(folder)
    if not images:
        raise DataError(f"{what} folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


class _MaskFinder:
    """Finds ``<stem><suffix>.<any image ext>`` in a mask folder, listing it once."""

    def __init__(self, folder: Path, suffixes: tuple[str, ...]) -> None:
        self.folder = folder
        self.suffixes = suffixes
        self.by_stem = {p.stem: p for p in list_images(folder)}

    def find(self, image: Path) -> Path:
        for suffix in self.suffixes:
            hit = self.by_stem.get(image.stem + suffix)
            if hit is not None:
                return hit
        expected = self.folder / f"{image.stem}{self.suffixes[0]}.png"
        raise DataError(f"no mask for anomalous image {image}: expected {expected}")


@register_layout("mvtec")
def read_mvtec(cat_dir: Path, cfg: DataConfig) -> DatasetIndex:
    native_3d = (cat_dir / "train" / "good" / "rgb").is_dir()

    def images_of(split_dir: Path, what: str, required: bool) -> list[Path]:
        folder = split_dir / "rgb" if native_3d else split_dir
        return _required_images(folder, what) if required else list_images(folder)

    train = [Sample(p, NORMAL) for p in images_of(cat_dir / "train" / "good", "training", True)]
    validation = [Sample(p, NORMAL) for p in images_of(cat_dir / "validation" / "good", "validation", False)]
    test: list[Sample] = []
    notes: list[str] = []
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        notes.append(f"no test split ({test_dir} is absent): training only")
    else:
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            images = images_of(defect_dir, "test", False)
            if defect_dir.name == "good":
                test += [Sample(p, NORMAL) for p in images]
                continue
            if native_3d:
                finder = _MaskFinder(defect_dir / "gt", ("", "_mask"))
            else:
                finder = _MaskFinder(cat_dir / "ground_truth" / defect_dir.name, ("_mask", ""))
            test += [Sample(p, ANOMALOUS, finder.find(p), defect_dir.name) for p in images]
    return DatasetIndex("mvtec", cat_dir.name, cat_dir, train, test, validation, notes)


@register_layout("btad")
def read_btad(cat_dir: Path, cfg: DataConfig) -> DatasetIndex:
    train = [Sample(p, NORMAL) for p in _required_images(cat_dir / "train" / "ok", "training")]
    test = [Sample(p, NORMAL) for p in list_images(cat_dir / "test" / "ok")]
    finder = _MaskFinder(cat_dir / "ground_truth" / "ko", ("", "_mask"))
    test += [Sample(p, ANOMALOUS, finder.find(p), "ko") for p in list_images(cat_dir / "test" / "ko")]
    return DatasetIndex("btad", cat_dir.name, cat_dir, train, test)


def _read_dagm_labels(split_dir: Path) -> list[Sample]:
    labels = split_dir / "Label" / "Labels.txt"
    if not labels.is_file():
        raise DataError(f"DAGM label file {labels} does not exist")
    samples = []
    for lineno, line in enumerate(labels.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if len(parts) < 3:  # the header line holds a single number
            continue
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{labels}:{lineno}: expected '<id> <0|1> <image> ...', got {line.strip()!r}") from None
        image = split_dir / parts[2]
        if not image.is_file():
            raise DataError(f"{labels}:{lineno} lists {image}, which does not exist")
        if label == 1:
            if len(parts) < 5:
                raise DataError(f"{labels}:{lineno}: defective image {parts[2]} has no mask file named")
            samples.append(Sample(image, ANOMALOUS, split_dir / "Label" / parts[4], "defect"))
        else:
            samples.append(Sample(image, NORMAL))
    return samples


@register_layout("dagm")
def read_dagm(cat_dir: Path, cfg: DataConfig) -> DatasetIndex:
    train_all = _read_dagm_labels(cat_dir / "Train")
    train = [s for s in train_all if s.label == NORMAL]
    notes = []
    left_out = len(train_all) - len(train)
    if left_out:
        notes.append(f"{left_out} defective images of {cat_dir / 'Train'} are left out of training (normals only)")
    test = _read_dagm_labels(cat_dir / "Test") if (cat_dir / "Test").is_dir() else []
    if not test:
        notes.append(f"no test split in {cat_dir / 'Test'}: training only")
    return DatasetIndex("dagm", cat_dir.name, cat_dir, train, test, notes=notes)


@register_layout("folder")
def read_folder(cat_dir: Path, cfg: DataConfig) -> DatasetIndex:
    normals = _required_images(cat_dir / cfg.normal_dir, "normal")
    notes = []
    if cfg.normal_test_dir:
        train_paths = normals
        test_normals = _required_images(cat_dir / cfg.normal_test_dir, "normal test")
    else:
        rng = np.random.default_rng([cfg.seed, 2])
        n_test = int(round(len(normals) * cfg.normal_test_fraction))
        n_test = min(max(n_test, 1), len(normals) - 1) if len(normals) > 1 else 0
        picked = set(rng.permutation(len(normals))[:n_test].tolist())
        test_normals = [p for i, p in enumerate(normals) if i in picked]
        train_paths = [p for i, p in enumerate(normals) if i not in picked]
        notes.append(f"{len(test_normals)} of {len(normals)} normal images held out for testing (seed {cfg.seed})")
    test = [Sample(p, NORMAL) for p in test_normals]
    abnormal_dir = cat_dir / cfg.abnormal_dir
    abnormal = list_images(abnormal_dir)
    if not abnormal:
        notes.append(f"no abnormal images in {abnormal_dir}: test metrics need some")
    if cfg.mask_dir:
        finder = _MaskFinder(cat_dir / cfg.mask_dir, ("", "_mask"))
        test += [Sample(p, ANOMALOUS, finder.find(p), "defect") for p in abnormal]
    else:
        test += [Sample(p, ANOMALOUS, None, "defect") for p in abnormal]
        if abnormal:
            notes.append("no mask folder: image metrics only")
    train = [Sample(p, NORMAL) for p in train_paths]
    return DatasetIndex("folder", cat_dir.name, cat_dir, train, test, notes=notes)
