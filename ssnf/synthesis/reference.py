"""The validation reference recipe: fixed procedural defects that differ from the training synthesis.

A sweep grades every config on these, so no config can be graded on its own synthesis. The defects are
the demo generator's painters (scratch, hole, contamination, colour shift) blended in at a strength between
30 % and 100 %, so that validation holds subtle defects as well as blatant ones (real defects are often
faint; blatant ones alone rank every model alike).

Where a category shows an object on a plain background (``object_regions``: one in at least 90 % of
its held-out images), the defects are painted on the object: a part's defects lie on
the part, and defects on an empty background are found by every map alike, so they cannot tell the maps
apart. Textures take defects anywhere. Each held-out normal image gets ``COPIES`` defects, each from a
fixed seed: the same anomalies for every trial, and enough of them that validation's ranking of maps is
not left to a handful of draws.

Two recipes (``data.reference``):

- ``standard``: the defect's full appearance blended in at a strength drawn from [30 %, 100 %].
- ``graded``: difficulty in units of the image's own normal variation, drawn per anomaly from one of
  ``GRADES`` (subtle, moderate, clear). The blend strength is set so that the defect's median change of a
  pixel is ``contrast`` times the image's noise level (the robust spread of the image minus its local mean),
  and subtle / moderate defects keep only a disc of the painted area (a smaller defect). A 30 % blend of a
  dark hole is blatant on a smooth grey tile and faint on a rubber tread: measured against each image's
  variation the same grade is about as hard on every category, and the subtle grade keeps validation off its
  ceiling where ``standard`` saturates (every config at image AUROC 1.0 ranks nothing; see
  ``bench/validation_spread.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ssnf.data.demo import DEFECTS, make_defect
from ssnf.synthesis.patches import object_regions

MIN_STRENGTH = 0.3
VISIBLE = 2  # grey levels: a pixel belongs to the mask when it changed at least this much
COPIES = 2  # reference anomalies per held-out normal image


@dataclass(frozen=True)
class Grade:
    """A difficulty: the defect's contrast in units of the image's noise level, and the radius (share of the
    image side) of the disc of the painted area that is kept (0: all of it)."""

    name: str
    contrast: tuple[float, float]
    radius: tuple[float, float]


GRADES = (Grade("subtle", (1.5, 3.0), (0.02, 0.045)),
          Grade("moderate", (3.0, 6.0), (0.04, 0.08)),
          Grade("clear", (6.0, 12.0), (0.0, 0.0)))
MIN_NOISE = 2.0 / 255  # a noise level floor: a flat synthetic image still gets visible defects


def noise_level(image: np.ndarray, region: np.ndarray | None = None) -> float:
    """The image's normal variation: 1.4826 x the median absolute deviation of the image (grey, [0, 1]) minus
    its local mean (a 7 px box), inside ``region`` (an object's defects are measured against the object, not
    against a flat background), floored at ``MIN_NOISE``."""
    grey = image.astype(np.float32).mean(axis=2) / 255.0
    detail = grey - cv2.blur(grey, (7, 7))
    if region is not None and region.sum() >= 64:
        detail = detail[region]
    return max(MIN_NOISE, 1.4826 * float(np.median(np.abs(detail - np.median(detail)))))


def _disc(area: np.ndarray, rng: np.random.Generator, radius: float) -> np.ndarray:
    """The part of ``area`` within ``radius`` pixels of one of its points (drawn)."""
    ys, xs = np.nonzero(area)
    i = int(rng.integers(len(ys)))
    yy, xx = np.mgrid[0:area.shape[0], 0:area.shape[1]]
    return area & ((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 <= radius ** 2)


def reference_anomaly(image: np.ndarray, seed: int, region: np.ndarray | None = None,
                      recipe: str = "standard") -> tuple[np.ndarray, np.ndarray, str]:
    """``(image uint8, mask bool, defect kind)`` for validation image ``image`` (uint8 [S, S, 3]), painted
    inside ``region`` (default: anywhere). ``graded``: the kind reads ``<defect>/<grade>``."""
    if recipe == "graded":
        return graded_anomaly(image, seed, region)
    rng = np.random.default_rng([seed, 7])
    kind, base, painted, area = _paint(image, rng, region)
    strength = rng.uniform(MIN_STRENGTH, 1.0)
    out = np.round(np.clip(base + strength * (painted - base), 0, 1) * 255).astype(np.uint8)
    mask = area & (np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) >= VISIBLE)
    if not mask.any():  # too faint on this image to see: use the full-strength defect
        out = np.round(np.clip(painted, 0, 1) * 255).astype(np.uint8)
        mask = area
    return out, mask, kind


def _paint(image: np.ndarray, rng: np.random.Generator, region: np.ndarray | None):
    kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    base = image.astype(np.float32) / 255.0
    anywhere = np.ones(image.shape[:2], bool)
    try:
        painted, area = make_defect(rng, base, anywhere if region is None else region, kind)
    except RuntimeError:  # the region is too thin for this defect: anywhere instead
        painted, area = make_defect(rng, base, anywhere, kind)
    return kind, base, painted, area


def graded_anomaly(image: np.ndarray, seed: int,
                   region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``graded`` recipe's anomaly: a grade drawn from ``GRADES``, then the defect's size and its contrast
    against this image's noise level drawn from the grade's ranges."""
    rng = np.random.default_rng([seed, 11])
    grade = GRADES[int(rng.integers(len(GRADES)))]
    kind, base, painted, area = _paint(image, rng, region)
    radius = rng.uniform(*grade.radius) * image.shape[0]
    if radius > 0:
        area = _disc(area, rng, max(radius, 2.0))
    change = np.abs(painted - base).max(axis=2)[area]
    contrast = rng.uniform(*grade.contrast) * noise_level(image, region)
    strength = float(np.clip(contrast / max(float(np.median(change)), 1e-6), 0.02, 1.0))
    blended = base + strength * (painted - base)
    out = np.round(np.clip(np.where(area[..., None], blended, base), 0, 1) * 255).astype(np.uint8)
    mask = area & (np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) >= VISIBLE)
    if mask.sum() < 4:  # too faint on this image to see: at the strength that makes it visible
        out = np.round(np.clip(np.where(area[..., None], painted, base), 0, 1) * 255).astype(np.uint8)
        mask = area
    return out, mask, f"{kind}/{grade.name}"


def reference_set(images: np.ndarray, seed: int, recipe: str = "standard") -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The validation anomalies of held-out normal ``images`` (uint8 [N, S, S, 3]): ``COPIES`` per image,
    image ``i``'s from seeds derived from ``(seed, i)``, on the object when the category has objects."""
    regions = object_regions(images)
    return [reference_anomaly(img, (seed * 100_003 + i) * COPIES + c, region, recipe)
            for i, (img, region) in enumerate(zip(images, regions)) for c in range(COPIES)]
