"""The validation reference recipe: fixed procedural defects that differ from the training synthesis.

A sweep grades every config on these, so no config can be graded on its own synthesis. The defects are
the demo generator's painters (scratch, hole, contamination, colour shift) blended in at a strength between
30 % and 100 %, so that validation holds subtle defects as well as blatant ones (real defects are often
faint; blatant ones alone rank every model alike).

Where a category shows an object on a plain background (``object_region`` finds one in at least
``OBJECT_IMAGES`` of its held-out images), the defects are painted on the object: a part's defects lie on
the part, and defects on an empty background are found by every map alike, so they cannot tell the maps
apart. Textures take defects anywhere. Each held-out normal image gets ``COPIES`` defects, each from a
fixed seed: the same anomalies for every trial, and enough of them that validation's ranking of maps is
not left to a handful of draws.
"""

from __future__ import annotations

import cv2
import numpy as np

from ssnf.data.demo import DEFECTS, make_defect

MIN_STRENGTH = 0.3
VISIBLE = 2  # grey levels: a pixel belongs to the mask when it changed at least this much
COPIES = 2  # reference anomalies per held-out normal image
OBJECT_SHARE = (0.05, 0.95)  # an object region must cover this share of the image ...
OBJECT_BORDER = 0.1  # ... and at most this share of the image border
OBJECT_IMAGES = 0.9  # a category has objects when this share of its images has one (else: a texture)
DEVIATION = 3.0  # object pixels differ from the border's background by this many times its median spread


def object_region(image: np.ndarray) -> np.ndarray | None:
    """The object of ``image`` (uint8 [S, S, 3]) as a bool mask, or ``None`` for a texture / no object.

    The background is modelled on the image border: its median colour and median local contrast. A pixel is
    on the object when its local mean colour or its local contrast departs from those by ``DEVIATION``
    times the border's own median departure; the largest connected part is kept, its holes filled. Dark
    objects on dark backgrounds (a tyre) are found by their contrast, flat objects by their colour."""
    size = image.shape[0]
    k = max(3, (size // 32) | 1)
    x = image.astype(np.float32)
    mean = cv2.blur(x, (k, k))
    contrast = np.sqrt(np.maximum(cv2.blur(x * x, (k, k)) - mean * mean, 0).sum(axis=2))
    ring = np.zeros(image.shape[:2], bool)
    w = max(2, size // 32)
    ring[:w], ring[-w:], ring[:, :w], ring[:, -w:] = True, True, True, True
    colour = np.sqrt(((mean - np.median(mean[ring], axis=0)) ** 2).sum(axis=2))
    contrast_dev = np.abs(contrast - np.median(contrast[ring]))
    fg = ((colour > DEVIATION * np.median(colour[ring]) + 8)
          | (contrast_dev > DEVIATION * np.median(contrast_dev[ring]) + 4)).astype(np.uint8)
    kernel = np.ones((k, k), np.uint8)
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    filled = np.zeros_like(fg)
    cv2.drawContours(filled, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    fg = filled.astype(bool)
    if not OBJECT_SHARE[0] <= fg.mean() <= OBJECT_SHARE[1] or fg[ring].mean() > OBJECT_BORDER:
        return None
    return fg


def reference_anomaly(image: np.ndarray, seed: int, region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
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
    regions = [object_region(img) for img in images]
    if sum(r is not None for r in regions) < OBJECT_IMAGES * len(regions):
        regions = [None] * len(regions)  # a texture, or objects not found reliably: anywhere
    return [reference_anomaly(img, (seed * 100_003 + i) * COPIES + c, region)
            for i, (img, region) in enumerate(zip(images, regions)) for c in range(COPIES)]
