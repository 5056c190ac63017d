"""Image and pixel AUROC and image F1-max.

AUROC is the trapezoidal area under the ROC curve, as scikit-learn's ``roc_auc_score`` computes it
(equal to the Mann-Whitney statistic with ties counting one half). Constant scores give 0.5, like any ranking
that carries no information. One class only, NaN or infinite scores are errors, not numbers.
"""

from __future__ import annotations

import numpy as np

from ssnf.errors import MetricError


def as_labels(labels, what: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype != bool:
        values = np.unique(arr)
        if not np.isin(values, [0, 1]).all():
            raise MetricError(f"{what} must be 0/1 or boolean, got values {values[:5].tolist()}")
        arr = arr.astype(bool)
    return arr.ravel()


def as_scores(scores, what: str = "scores", dtype=np.float64) -> np.ndarray:
    arr = np.asarray(scores, dtype=dtype).ravel()
    if not np.isfinite(arr).all():
        raise MetricError(f"{what} contain {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    return arr


def auroc(labels, scores, what: str = "AUROC") -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = anomalous).

    The Mann-Whitney count, equal to the trapezoidal ROC area with ties counting one half: one class is
    sorted (the larger: for pixel AUROC the normal pixels, a value sort without an index) and the other
    is located in it by binary search; the counts are exact integers.
    """
    y = as_labels(labels)
    raw = np.asarray(scores)
    s = as_scores(raw, dtype=np.float32 if raw.dtype == np.float32 else np.float64)  # float32 maps sort faster
    if y.shape != s.shape:
        raise MetricError(f"{what}: {y.size} labels but {s.size} scores")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(f"{what} needs normal and anomalous samples; got {n_neg} normal and {n_pos} anomalous")
    if n_neg >= n_pos:  # per positive: the negatives below it, and half of those equal to it
        ref = np.sort(s[~y])
        low, high = np.searchsorted(ref, s[y], "left"), np.searchsorted(ref, s[y], "right")
        wins = 2 * int(low.sum()) + int((high - low).sum())
    else:  # per negative: the positives above it, and half of those equal to it
        ref = np.sort(s[y])
        low, high = np.searchsorted(ref, s[~y], "left"), np.searchsorted(ref, s[~y], "right")
        wins = 2 * int((n_pos - high).sum()) + int((high - low).sum())
    return wins / (2.0 * n_pos * n_neg)


def image_auroc(labels, scores) -> float:
    """Image-level AUROC: one score and one label per image."""
    return auroc(labels, scores, "image AUROC")


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over every pixel of every map (normal images included)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise MetricError(f"pixel AUROC: masks of shape {masks.shape} but maps of shape {maps.shape}")
    return auroc(masks, maps, "pixel AUROC")


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all thresholds, and that threshold (a sample is anomalous when score >= it)."""
    y = as_labels(labels)
    s = as_scores(scores)
    if y.shape != s.shape:
        raise MetricError(f"F1-max: {y.size} labels but {s.size} scores")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise MetricError("F1-max needs at least one anomalous sample")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[ends]
    fp = np.cumsum(~y_sorted)[ends]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_sorted[ends][best])


def image_f1_max(labels, scores) -> float:
    return f1_max(labels, scores)[0]


def _pair_wins(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``[n_pos, n_neg]``: 1 where the anomalous image outscores the normal one, 0.5 on a tie."""
    pos, neg = s[y][:, None], s[~y][None, :]
    return (pos > neg) + 0.5 * (pos == neg)


def paired_auroc_difference(labels, scores_a, scores_b, rounds: int = 10000, seed: int = 0,
                            level: float = 0.95) -> dict[str, float]:
    """AUROC of ``scores_a`` minus that of ``scores_b`` on the same images, with a stratified paired bootstrap.

    Each round draws the anomalous and the normal images with replacement (their counts kept, as a
    test split's are) and scores both rankings on the same draw, so what the interval measures is how
    much the difference depends on which test images happened to be collected. Scores of shape ``[R, N]``
    are ``R`` pairs of runs (training seeds) on the same ``N`` images: the difference is their mean, and
    every round draws the same images for all of them. Returns ``diff`` (on all images), ``low``/``high``
    (the central ``level`` interval of the rounds) and ``a_ahead`` (the share of rounds where ``a`` is
    strictly ahead). Test-image noise only: the spread between training seeds is not in the interval.
    """
    y = as_labels(labels)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.ndim not in (1, 2) or b.ndim != a.ndim:
        raise MetricError(f"paired AUROC: scores of shapes {a.shape} and {b.shape}; give [N] or [runs, N] each")
    a, b = (a, b) if a.ndim == 2 else (a.reshape(1, -1), b.reshape(1, -1))
    if not (a.shape == b.shape and a.shape[1] == y.size):
        raise MetricError(f"paired AUROC: {y.size} labels, {a.shape[-1]} and {b.shape[-1]} scores")
    for scores, what in ((a, "scores_a"), (b, "scores_b")):
        as_scores(scores, what)  # NaN or infinite scores are errors
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricError(f"paired AUROC needs normal and anomalous samples; got {n_neg} normal and {n_pos} anomalous")
    if rounds < 1 or not 0.0 < level < 1.0:
        raise MetricError(f"paired AUROC: rounds={rounds} must be >= 1 and level={level} in (0, 1)")
    delta = np.mean([_pair_wins(y, ra) - _pair_wins(y, rb) for ra, rb in zip(a, b)], axis=0)  # [n_pos, n_neg]
    rng = np.random.default_rng(seed)
    pos_counts = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=rounds)  # [R, n_pos]
    neg_counts = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=rounds)  # [R, n_neg]
    diffs = ((pos_counts @ delta) * neg_counts).sum(axis=1) / (n_pos * n_neg)
    tail = (1.0 - level) / 2.0
    return {"diff": float(delta.mean()), "low": float(np.quantile(diffs, tail)),
            "high": float(np.quantile(diffs, 1.0 - tail)), "a_ahead": float((diffs > 0).mean())}
