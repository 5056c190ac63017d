"""The validation reference recipe: fixed procedural defects that differ from the training synthesis.

A sweep grades every config on these, so no config can be graded on its own synthesis. The defects are
the demo generator's painters (scratch, hole, contamination, colour shift) applied anywhere on the
image and blended in at a strength between 30 % and 100 %, so that validation holds subtle defects
as well as blatant ones (real defects are often faint; blatant ones alone rank every model alike).
Each validation image gets its defect from a fixed seed: the same anomalies for every trial.
"""

from __future__ import annotations

import numpy as np

from ssnf.data.demo import DEFECTS, make_defect

MIN_STRENGTH = 0.3
VISIBLE = 2  # grey levels: a pixel belongs to the mask when it changed at least this much


def reference_anomaly(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image uint8, mask bool, defect kind)`` for validation image ``image`` (uint8 [S, S, 3])."""
    rng = np.random.default_rng([seed, 7])
    kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    base = image.astype(np.float32) / 255.0
    painted, region = make_defect(rng, base, np.ones(image.shape[:2], bool), kind)
    strength = rng.uniform(MIN_STRENGTH, 1.0)
    out = np.round(np.clip(base + strength * (painted - base), 0, 1) * 255).astype(np.uint8)
    mask = region & (np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) >= VISIBLE)
    if not mask.any():  # too faint on this image to see: use the full-strength defect
        out = np.round(np.clip(painted, 0, 1) * 255).astype(np.uint8)
        mask = region
    return out, mask, kind
