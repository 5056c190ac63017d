"""Decision thresholds from normal images only: the image-score threshold and the pixel threshold of the masks.

After training, the held-out normal validation images (never a defect, never a test image) are scored by the
model; the image threshold is the score that a share ``fpr`` of normal images would exceed, the pixel
threshold the map value that a share ``pixel_fpr`` of normal pixels would exceed.

A category often has a few dozen validation normals: too few to read a 1 % quantile off directly (with 21
normals the empirical 99th percentile is the maximum, whatever the tail looks like). ``threshold.method``:

- ``auto`` (default): ``empirical`` when at least ``MIN_EXCEEDANCES`` normals lie beyond the quantile
  (``n * fpr >= 10``: 1000 normals at 1 %), otherwise ``gumbel``;
- ``gumbel``: a Gumbel (extreme-value type I) distribution fitted to the normals' scores by probability-weighted
  moments. An image score is the maximum (or the mean of the top 1 %) of a map, and maxima of many weakly
  dependent values are what extreme-value laws describe; the fit extrapolates a tail the sample cannot show;
- ``normal``: a Gaussian fit (mean + z * standard deviation): lighter-tailed, for comparison;
- ``empirical``: the sample quantile (the ``higher`` value: no more than ``fpr`` of the normals lie above it);
- ``f1`` (off by default): the score with the best F1 between the validation normals and the validation
  reference anomalies (``ssnf.synthesis.reference``): synthetic defects, so it rests on what the recipe draws.

Pixels are many (every normal image gives ``S * S``), so the pixel threshold is always the empirical quantile,
read from a table of the normal pixels' upper tail kept with the threshold (``pixel_tail``) so that another
``pixel_fpr`` can be asked for at predict time without the validation images; the normals' image scores are
kept for the same reason. The verdict is *anomalous* when a score is strictly above the threshold.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ssnf.config import THRESHOLD_METHODS, ThresholdConfig
from ssnf.errors import ConfigError
from ssnf.metrics.roc import f1_max

MIN_EXCEEDANCES = 10  # auto: the empirical quantile once this many normals lie beyond it
EULER_GAMMA = 0.5772156649015329
PIXEL_TAIL_FPRS = np.unique(np.r_[np.logspace(-6, -1, 51), np.linspace(0.1, 0.5, 9)])  # the pixel table's rows


@dataclass
class Threshold:
    """A model's thresholds and what they rest on (saved in the checkpoint and in exported files' metadata)."""

    image: float  # verdict: anomalous when the image score > image
    pixel: float  # mask: anomalous pixels where the map > pixel
    fpr: float  # the requested false-positive rate of images
    pixel_fpr: float  # the requested false-positive rate of pixels
    method: str  # the estimate the image threshold comes from (empirical | gumbel | normal | f1)
    requested: str  # the method asked for (auto picks empirical or gumbel)
    n_normals: int  # validation normals the image threshold rests on
    n_anomalies: int = 0  # validation reference anomalies (f1 only uses them)
    normal_scores: list[float] = field(default_factory=list)  # the validation normals' image scores
    anomaly_scores: list[float] = field(default_factory=list)  # the reference anomalies' image scores
    pixel_tail: list[list[float]] = field(default_factory=list)  # [[fpr, value], ...] of the normal pixels
    pixel_median: float = 0.0  # the normal pixels' median (overlays are coloured from here to past the threshold)
    precision: str = "fp32"  # the arithmetic the scores came from (train.precision; exported files: fp32)
    scoring: dict = field(default_factory=dict)  # the resolved scoring the scores came from

    def at(self, fpr: float | None = None, pixel_fpr: float | None = None, method: str | None = None) -> "Threshold":
        """The same normals, another requested rate or method (``ssnf predict --fpr``)."""
        cfg = ThresholdConfig(fpr=self.fpr if fpr is None else fpr,
                              pixel_fpr=self.pixel_fpr if pixel_fpr is None else pixel_fpr,
                              method=self.requested if method is None else method)
        cfg.validate()
        value, used = image_threshold(np.asarray(self.normal_scores), np.asarray(self.anomaly_scores), cfg)
        return dataclasses.replace(self, image=value, method=used, requested=cfg.method, fpr=cfg.fpr,
                                   pixel_fpr=cfg.pixel_fpr, pixel=pixel_from_tail(self.pixel_tail, cfg.pixel_fpr))

    def describe(self) -> str:
        how = {"empirical": "the empirical quantile of", "gumbel": "a Gumbel tail fitted to",
               "normal": "a Gaussian fitted to"}
        image = (f"F1-max between {self.n_normals} validation normals and {self.n_anomalies} reference anomalies"
                 if self.method == "f1" else
                 f"at {self.fpr:.3g} FPR ({how[self.method]} {self.n_normals} validation normals)")
        return (f"image threshold {self.image:.6g}, {image}; pixel threshold {self.pixel:.6g} at "
                f"{self.pixel_fpr:.3g} FPR (empirical, normal pixels); {self.precision} scores")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Threshold":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def gumbel_quantile(scores: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a Gumbel law fitted by probability-weighted moments (robust for small samples)."""
    x = np.sort(np.asarray(scores, np.float64))
    n = len(x)
    b0 = x.mean()
    b1 = float(np.sum(np.arange(n) / (n - 1) * x) / n)
    scale = (2 * b1 - b0) / math.log(2)
    loc = b0 - EULER_GAMMA * scale
    return float(loc - scale * math.log(-math.log(q)))


def normal_quantile(scores: np.ndarray, q: float) -> float:
    from scipy.stats import norm

    return float(np.mean(scores) + np.std(scores, ddof=1) * norm.ppf(q))


def f1_threshold(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """The score that maximises F1 (anomalous when above it) between ``normal`` and ``anomalous`` scores: midway
    between the score ``metrics.f1_max`` picks (anomalous from it on) and the next lower score."""
    scores = np.r_[normal, anomalous]
    labels = np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]
    _, best = f1_max(labels, scores)
    lower = scores[scores < best]
    return float(0.5 * (best + (lower.max() if lower.size else best - 1.0)))


def image_threshold(normal: np.ndarray, anomalous: np.ndarray, cfg: ThresholdConfig) -> tuple[float, str]:
    """``(threshold, method used)`` for the normals' image scores ``normal`` under ``cfg``."""
    normal = np.asarray(normal, np.float64)
    n = len(normal)
    if n < 2:
        raise ConfigError(f"a threshold needs at least 2 validation normals, got {n}: raise data.val_fraction")
    method = cfg.method
    if method == "auto":
        method = "empirical" if n * cfg.fpr >= MIN_EXCEEDANCES else "gumbel"
    q = 1.0 - cfg.fpr
    if method == "empirical":
        return float(np.quantile(normal, q, method="higher")), method
    if method == "gumbel":
        return gumbel_quantile(normal, q), method
    if method == "normal":
        return normal_quantile(normal, q), method
    if len(anomalous) == 0:
        raise ConfigError("threshold.method=f1 needs the validation reference anomalies' scores: recalibrate")
    return f1_threshold(normal, np.asarray(anomalous, np.float64)), method


def pixel_tail(values: np.ndarray) -> list[list[float]]:
    """``[[fpr, value], ...]``: the normal pixels' upper quantiles at ``PIXEL_TAIL_FPRS``."""
    values = np.asarray(values).ravel()
    quantiles = np.quantile(values, 1.0 - PIXEL_TAIL_FPRS)
    return [[float(f), float(v)] for f, v in zip(PIXEL_TAIL_FPRS, quantiles)]


def pixel_from_tail(tail: list[list[float]], fpr: float) -> float:
    """The pixel threshold at ``fpr``, interpolated in log rate between the table's rows (clamped at its ends)."""
    if not tail:
        raise ConfigError("this threshold keeps no table of normal pixels: calibrate the model again")
    rates, values = np.asarray(tail, np.float64).T
    return float(np.interp(math.log(fpr), np.log(rates), values))


def fit_threshold(normal_scores: np.ndarray, anomaly_scores: np.ndarray, normal_maps: np.ndarray,
                  cfg: ThresholdConfig, precision: str = "fp32", scoring: dict | None = None) -> Threshold:
    """The thresholds of ``cfg`` from validation normals' image scores and maps (and the anomalies' scores)."""
    cfg.validate()
    image, used = image_threshold(normal_scores, anomaly_scores, cfg)
    sample = np.asarray(normal_maps, np.float32).ravel()
    tail = pixel_tail(sample)
    return Threshold(image=image, pixel=pixel_from_tail(tail, cfg.pixel_fpr), fpr=cfg.fpr, pixel_fpr=cfg.pixel_fpr,
                     method=used, requested=cfg.method, n_normals=len(normal_scores),
                     n_anomalies=len(anomaly_scores),
                     normal_scores=[float(s) for s in normal_scores],
                     anomaly_scores=[float(s) for s in anomaly_scores],
                     pixel_tail=tail, pixel_median=float(np.median(sample)), precision=precision,
                     scoring=dict(scoring or {}))


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """False-positive and false-negative rates of ``score > threshold`` (NaN where a class is absent)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    flagged = scores > threshold
    normal, anomalous = labels == 0, labels == 1
    return {"fpr": float(flagged[normal].mean()) if normal.any() else float("nan"),
            "fnr": float((~flagged[anomalous]).mean()) if anomalous.any() else float("nan")}


__all__ = ["MIN_EXCEEDANCES", "THRESHOLD_METHODS", "Threshold", "fit_threshold", "f1_threshold", "gumbel_quantile",
           "image_threshold", "normal_quantile", "pixel_from_tail", "pixel_tail", "rates"]
