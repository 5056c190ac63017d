"""Detection and localisation metrics: image AUROC and F1-max, pixel AUROC, AUPRO."""

from __future__ import annotations

import numpy as np

from ssnf.metrics.pro import aupro, pro_curve
from ssnf.metrics.roc import auroc, f1_max, image_auroc, image_f1_max, paired_auroc_difference, pixel_auroc

__all__ = ["aupro", "auroc", "compute_metrics", "f1_max", "image_auroc", "image_f1_max", "paired_auroc_difference",
           "pixel_auroc", "pro_curve"]


def compute_metrics(labels, image_scores, masks=None, maps=None) -> dict[str, float]:
    """All four metrics; the pixel ones only when masks and maps are given."""
    out = {"image_auroc": image_auroc(labels, image_scores), "image_f1_max": image_f1_max(labels, image_scores)}
    if masks is not None and maps is not None:
        masks, maps = np.asarray(masks), np.asarray(maps)
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["aupro"] = aupro(masks, maps)
    return out
