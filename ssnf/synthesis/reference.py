"""The validation reference recipe: fixed procedural defects that differ from the training synthesis.

A sweep grades every config on these, so no config can be graded on its own synthesis. The defects are
the demo generator's painters (scratch, hole, contamination, colour shift) applied anywhere on the
image, drawn from a fixed seed per validation image: the same anomalies for every trial.
"""

from __future__ import annotations

import numpy as np

from ssnf.data.demo import DEFECTS, make_defect


def reference_anomaly(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image uint8, mask bool, defect kind)`` for validation image ``image`` (uint8 [S, S, 3])."""
    rng = np.random.default_rng([seed, 7])
    kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    base = image.astype(np.float32) / 255.0
    out, mask = make_defect(rng, base, np.ones(image.shape[:2], bool), kind)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8), mask, kind
