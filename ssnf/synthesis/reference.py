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
"""

from __future__ import annotations

import numpy as np

from ssnf.data.demo import DEFECTS, make_defect
from ssnf.synthesis.patches import object_regions

MIN_STRENGTH = 0.3
VISIBLE = 2  # grey levels: a pixel belongs to the mask when it changed at least this much
COPIES = 2  # reference anomalies per held-out normal image


def reference_anomaly(image: np.ndarray, seed: int,
                      region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image uint8, mask bool, defect kind)`` for validation image ``image`` (uint8 [S, S, 3]), painted
    inside ``region`` (default: anywhere)."""
    rng = np.random.default_rng([seed, 7])
    kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    base = image.astype(np.float32) / 255.0
    anywhere = np.ones(image.shape[:2], bool)
    try:
        painted, area = make_defect(rng, base, anywhere if region is None else region, kind)
    except RuntimeError:  # the region is too thin for this defect: anywhere instead
        painted, area = make_defect(rng, base, anywhere, kind)
    strength = rng.uniform(MIN_STRENGTH, 1.0)
    out = np.round(np.clip(base + strength * (painted - base), 0, 1) * 255).astype(np.uint8)
    mask = area & (np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) >= VISIBLE)
    if not mask.any():  # too faint on this image to see: use the full-strength defect
        out = np.round(np.clip(painted, 0, 1) * 255).astype(np.uint8)
        mask = area
    return out, mask, kind


def reference_set(images: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The validation anomalies of held-out normal ``images`` (uint8 [N, S, S, 3]): ``COPIES`` per image,
    image ``i``'s from seeds derived from ``(seed, i)``, on the object when the category has objects."""
    regions = object_regions(images)
    return [reference_anomaly(img, (seed * 100_003 + i) * COPIES + c, region)
            for i, (img, region) in enumerate(zip(images, regions)) for c in range(COPIES)]
