"""Setting a detector's thresholds after training: on its validation normals, or on the line's own good images.

``ssnf calibrate --checkpoint C`` re-reads the validation split the model was trained with (its held-out
normals: a few dozen, the training session's). ``ssnf calibrate --checkpoint C --normals FOLDER|GLOB...`` (and
``ssnf train --calibration-normals ...``, ``make models CALIBRATION=DIR``) scores any number of good parts from
the line through the ``Detector`` path instead, and by default sets thresholds with a stated promise
(``threshold.method=conformal``, ``ssnf.threshold``): refused in one line where these normals are too few for
the request. Files that cannot be decoded are reported, left out and counted; a folder of grey and colour images
mixed, or of another kind than the model's earlier calibration, is refused. The checkpoint is rewritten
atomically, and only once every threshold was set: a refused calibration leaves it as it was. The thresholds
keep their normals' scores and image statistics, the drift alarm's reference (``ssnf.drift``).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ssnf.checkpoint import set_thresholds
from ssnf.config import ThresholdConfig
from ssnf.data.io import open_image
from ssnf.errors import DataError, SSNFError
from ssnf.inference import Detector
from ssnf.predict import collect_inputs
from ssnf.threshold import Threshold, check_conformal

GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L")


@dataclass
class Normals:
    """Good parts read for calibration: decoded at the model's size, and what was left out."""

    images: np.ndarray  # uint8 [N, S, S, 3], as Detector.prepare makes them
    paths: list[Path]
    excluded: list[tuple[Path, str]] = field(default_factory=list)  # (file, why): unreadable
    channels: str = ""  # grey | colour


def channel_kind(path: Path) -> str:
    """``grey`` or ``colour``: what the file holds before ssnf makes it RGB."""
    with Image.open(path) as im:
        return "grey" if im.mode in GREY_MODES else "colour"


def _check_folders(items: Sequence[str | Path]) -> None:
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
            raise SSNFError(f"normals folder {path} cannot be read (permission denied)")


def read_normals(items: Sequence[str | Path], detector: Detector) -> Normals:
    """The image files in ``items`` (files, folders, globs: as ``ssnf predict`` takes them), decoded as the
    training images were and resized to ``detector``'s size; unreadable files left out and counted."""
    _check_folders(items)
    inputs = collect_inputs(items)
    images, paths, excluded, kinds = [], [], [], {}
    for path in inputs.images:
        try:
            kinds[path] = channel_kind(path)
            images.append(detector.prepare([np.asarray(open_image(path))])[0])
        except (DataError, OSError, ValueError) as exc:
            kinds.pop(path, None)
            excluded.append((path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        paths.append(path)
    where = ", ".join(str(i) for i in items)
    if not images:
        raise SSNFError(f"none of the {len(inputs.images)} image files in {where} could be read (e.g. "
                        f"{excluded[0][0]}: {excluded[0][1]})")
    counts = Counter(kinds.values())
    if len(counts) > 1:
        minority = min(counts, key=counts.get)
        example = next(p for p, k in kinds.items() if k == minority)
        raise SSNFError(f"the normals in {where} mix grey and colour images ({counts['grey']} grey, "
                        f"{counts['colour']} colour; e.g. {example} is {minority}): calibrate on images like the line's")
    return Normals(np.stack(images), paths, excluded, next(iter(counts)))


def wanted(base: ThresholdConfig, fpr: float | None = None, pixel_fpr: float | None = None,
           method: str | None = None, delta: float | None = None, normals: bool = False) -> ThresholdConfig:
    """The thresholds asked for: ``base`` (the model's) with what the command line gives; calibration on the
    line's normals defaults to ``conformal``."""
    cfg = ThresholdConfig(fpr=base.fpr if fpr is None else fpr,
                          pixel_fpr=base.pixel_fpr if pixel_fpr is None else pixel_fpr,
                          method=method or ("conformal" if normals else base.method),
                          delta=base.delta if delta is None else delta)
    cfg.validate()
    if normals and cfg.method == "f1":
        raise SSNFError("--threshold-method f1 needs the validation reference anomalies: calibrate without --normals")
    return cfg


def check_count(items: Sequence[str | Path], cfg: ThresholdConfig) -> int:
    """Before a long run (``ssnf train --calibration-normals``): are there files enough for the promise asked?"""
    _check_folders(items)
    n = len(collect_inputs(items).images)
    check_conformal(n, cfg)
    return n


def calibrate_on_normals(detector: Detector, items: Sequence[str | Path], cfg: ThresholdConfig) -> Normals:
    """Set the thresholds of ``detector`` (a loaded checkpoint) from the good parts in ``items``; write them into
    its checkpoint."""
    detector.eager("calibrate")
    path = detector.source
    normals = read_normals(items, detector)
    check_conformal(len(normals.images), cfg)
    earlier = {t.channels for t in detector.thresholds.values() if t.channels}
    if earlier and normals.channels not in earlier:
        raise SSNFError(f"these normals are {normals.channels} images and {path} was calibrated on "
                        f"{earlier.pop()} ones: calibrate on images like the line's")
    detector.calibrate_images(normals.images, None, cfg, source="calibration",
                              normals_from=[str(i) for i in items], excluded=len(normals.excluded),
                              channels=normals.channels)
    set_thresholds(path, detector.thresholds, cfg)
    return normals


def calibrate_on_validation(detector: Detector, cfg: ThresholdConfig, data_root: str | None = None) -> None:
    """Set the thresholds of ``detector`` (a loaded checkpoint) from the validation normals it was trained with;
    write them into its checkpoint."""
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.features import load_images
    from ssnf.prepared import build_validation

    model = detector.eager("calibrate").model
    data = dataclasses.replace(detector.cfg.data, root=data_root or detector.cfg.data.root)
    splits = make_splits(load_index(data), data)
    if len(splits.val) < 2:
        raise SSNFError(f"{len(splits.val)} validation images for {data.category}: thresholds need at least 2 "
                        "validation normals")
    validation = build_validation(model.extractor, load_images(splits.val, data.image_size), data.seed,
                                  detector.device, data.reference)
    detector.calibrate(validation, cfg)
    set_thresholds(detector.source, detector.thresholds, cfg)


def report(detector: Detector, normals: Normals | None = None) -> list[str]:
    """What a calibration set, in lines for the terminal."""
    lines = [t.describe() for t in _ordered(detector.thresholds)]
    if normals is not None and normals.excluded:
        lines.append(f"left out {len(normals.excluded)} unreadable file(s), e.g. {normals.excluded[0][0]}: "
                     f"{normals.excluded[0][1]}")
    return lines


def _ordered(thresholds: dict[str, Threshold]) -> list[Threshold]:
    return sorted(thresholds.values(), key=_fp32_first)


def _fp32_first(threshold: Threshold) -> bool:
    return threshold.precision != "fp32"


__all__ = ["Normals", "calibrate_on_normals", "calibrate_on_validation", "channel_kind", "check_count",
           "read_normals", "report", "wanted"]
