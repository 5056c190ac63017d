"""AUPRO as MVTec's reference defines it, computed with one sort.

Ground-truth regions are the 8-connected components of every mask. At a threshold t, the PRO is the
mean over all regions (of all images) of the share of the region's pixels scoring >= t, and the FPR
is the share of normal pixels (of all images) scoring >= t. The PRO curve is integrated over
FPR in [0, fpr_limit] with the trapezoidal rule, interpolating linearly at the limit, and divided by
fpr_limit, so a perfect map scores 1 and a constant map scores fpr_limit / 2 (0.15 at 0.3).

Instead of re-thresholding hundreds of times, every pixel gets a weight (1 / normal-pixel count for a
normal pixel, 1 / (region size * region count) for an anomalous one); sorting the scores once and
taking cumulative sums of the weights gives FPR and PRO at every distinct threshold exactly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ssnf.errors import MetricError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def pro_curve(masks, maps, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` at every distinct threshold, from the highest down, starting at (0, 0).

    With ``fpr_limit < 1`` the curve stops at the first point past the limit (all that the area up to
    the limit needs), and only the pixels scoring at least that point's threshold are sorted.
    """
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.shape != maps.shape or masks.ndim != 3:
        raise MetricError(f"AUPRO: masks of shape {masks.shape} but maps of shape {maps.shape} (want [N, H, W] both)")
    scores = maps.ravel() if maps.dtype in (np.float32, np.float64) else maps.ravel().astype(np.float64)
    if not np.isfinite(scores).all():
        raise MetricError(f"anomaly maps contain {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    regions = np.zeros(masks.shape, dtype=np.int32)
    count = 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
        regions[i] = np.where(labeled > 0, labeled + count, 0)
        count += n
    if count == 0:
        raise MetricError("AUPRO needs at least one anomalous pixel in the masks; these have none")
    regions = regions.ravel()
    sizes = np.bincount(regions, minlength=count + 1)
    num_ok = int(sizes[0])
    if num_ok == 0:
        raise MetricError("AUPRO needs normal pixels; every pixel of these masks is anomalous")
    # Per-region weight of one of its pixels; region 0 (normal pixels) adds nothing to the PRO.
    region_weight = np.zeros(count + 1, dtype=np.float64)
    region_weight[1:] = 1.0 / (sizes[1:].astype(np.float64) * count)
    if fpr_limit < 1.0:
        # The k-th highest normal score is the first threshold whose FPR exceeds the limit.
        k = min(int(np.floor(fpr_limit * num_ok)) + 1, num_ok)
        normal_scores = scores[regions == 0]
        cut = np.partition(normal_scores, num_ok - k)[num_ok - k]
        keep = np.flatnonzero(scores >= cut)
        scores, regions = scores[keep], regions[keep]
    order = np.argsort(scores)[::-1]  # ascending sort reversed: faster than sorting the negation
    sorted_regions = regions[order]
    sorted_scores = scores[order]
    ends = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    fpr = np.cumsum(sorted_regions == 0)[ends] / num_ok
    pro = np.cumsum(region_weight[sorted_regions])[ends]
    fpr = np.clip(np.r_[0.0, fpr], 0.0, 1.0)
    pro = np.clip(np.r_[0.0, pro], 0.0, 1.0)
    return fpr, pro


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under ``y(x)`` for ``x`` in [x[0], limit]; ``x`` must be non-decreasing."""
    n = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:n], y[:n]
    if n < len(x) and xs[-1] < limit:
        x0, x1, y0, y1 = x[n - 1], x[n], y[n - 1], y[n]
        xs = np.r_[xs, limit]
        ys = np.r_[ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec's default 0.3)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"AUPRO fpr_limit={fpr_limit} must lie in (0, 1]")
    fpr, pro = pro_curve(masks, maps, fpr_limit)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit
