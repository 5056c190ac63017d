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
  reference anomalies (``ssnf.synthesis.reference``): synthetic defects, so it rests on what the recipe draws;
- ``conformal``: a threshold with a stated promise, for calibration on the line's own good images (``ssnf
  calibrate --normals``). The image threshold is the k-th smallest of the n normals' scores, k the smallest rank
  with ``P(Binomial(n, 1 - fpr) <= k - 1) >= 1 - delta``: for normals exchangeable with the line's future good
  parts, their false-positive rate is at most ``fpr`` with probability at least ``1 - delta`` over the draw of
  the calibration set (the order statistic's coverage is Beta-distributed; Vovk 2012, "training-conditional"
  conformal prediction). Where even the maximum cannot promise it (``(1 - fpr) ** n > delta``: 299 normals for
  1 % at delta 0.05, 59 for 5 %) it is refused in one line with the best rate these n can promise and the n the
  request needs. Pixels are not independent within an image, so the pixel promise is made with images as the
  units: conformal risk control (Angelopoulos et al. 2022) over each image's share of pixels above the
  threshold, which bounds the expected share on a new good image by ``pixel_fpr`` (in expectation, not with
  probability 1 - delta: a per-image share lies anywhere in [0, 1], and a bound that holds with probability
  1 - delta would need about 300 images at 1 %); it needs ``n >= 1 / pixel_fpr - 1`` images.

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
SUMMARY = 1000  # the drift alarm keeps at most this many quantiles of the normals' image statistics
PIXEL_TAIL_FPRS = np.unique(np.r_[np.logspace(-6, -1, 51), np.linspace(0.1, 0.5, 9)])  # the pixel table's rows


@dataclass
class Threshold:
    """A model's thresholds and what they rest on (saved in the checkpoint and in exported files' metadata)."""

    image: float  # verdict: anomalous when the image score > image
    pixel: float  # mask: anomalous pixels where the map > pixel
    fpr: float  # the requested false-positive rate of images
    pixel_fpr: float  # the requested false-positive rate of pixels
    method: str  # the estimate the image threshold comes from (conformal | empirical | gumbel | normal | f1)
    requested: str  # the method asked for (auto picks empirical or gumbel)
    n_normals: int  # validation normals the image threshold rests on
    n_anomalies: int = 0  # validation reference anomalies (f1 only uses them)
    normal_scores: list[float] = field(default_factory=list)  # the validation normals' image scores
    anomaly_scores: list[float] = field(default_factory=list)  # the reference anomalies' image scores
    pixel_tail: list[list[float]] = field(default_factory=list)  # [[fpr, value], ...] of the normal pixels
    pixel_median: float = 0.0  # the normal pixels' median (overlays are coloured from here to past the threshold)
    precision: str = "fp32"  # the arithmetic the scores came from (train.precision; exported files: fp32)
    scoring: dict = field(default_factory=dict)  # the resolved scoring the scores came from
    delta: float = 0.0  # conformal: the image promise holds with probability >= 1 - delta (0: no promise)
    rank: int = 0  # conformal: the image threshold is the rank-th smallest normal score (1-based)
    source: str = "validation"  # the normals it rests on: validation (held out in training) | calibration
    normals_from: list[str] = field(default_factory=list)  # calibration: the folders / globs the normals came from
    excluded: int = 0  # calibration: files left out (unreadable), counted
    channels: str = ""  # calibration: grey | colour, what the normals' files were
    brightness: list[float] = field(default_factory=list)  # the normals' mean grey level (drift alarm; <= SUMMARY)
    contrast: list[float] = field(default_factory=list)  # their grey-level standard deviation (drift alarm)
    warmth: list[float] = field(default_factory=list)  # their mean red minus mean blue (drift alarm)

    def at(self, fpr: float | None = None, pixel_fpr: float | None = None, method: str | None = None) -> "Threshold":
        """The same normals, another requested rate or method (``ssnf predict --fpr``). A conformal pixel threshold
        is re-read from the normal pixels' tail table (interpolated between its rows)."""
        cfg = ThresholdConfig(fpr=self.fpr if fpr is None else fpr,
                              pixel_fpr=self.pixel_fpr if pixel_fpr is None else pixel_fpr,
                              method=self.requested if method is None else method,
                              delta=self.delta or ThresholdConfig.delta)
        cfg.validate()
        value, used = image_threshold(np.asarray(self.normal_scores), np.asarray(self.anomaly_scores), cfg,
                                      self.source)
        promise = _promise(self.n_normals, cfg, used)
        rate = pixel_rate(self.n_normals, cfg.pixel_fpr) if promise["rank"] else cfg.pixel_fpr
        return dataclasses.replace(self, image=value, method=used, requested=cfg.method, fpr=cfg.fpr,
                                   pixel_fpr=cfg.pixel_fpr,
                                   pixel=self.pixel if (cfg.pixel_fpr, used) == (self.pixel_fpr, self.method)
                                   else pixel_from_tail(self.pixel_tail, rate), **promise)

    def promise(self) -> str:
        """The guarantee in words ("" where the threshold makes none)."""
        if self.method != "conformal":
            return ""
        return (f"image FPR <= {_pct(self.fpr)} with probability >= {_pct(1 - self.delta)}, pixel FPR <= "
                f"{_pct(self.pixel_fpr)} in expectation, for good parts like these {self.n_normals} normals")

    def describe(self) -> str:
        how = {"empirical": "the empirical quantile of", "gumbel": "a Gumbel tail fitted to",
               "normal": "a Gaussian fitted to"}
        normals = f"{self.n_normals} {self.source} normals"
        if self.method == "conformal":
            return (f"image threshold {self.image:.6g} (the {_ordinal(self.rank)} smallest of {normals}' scores), pixel threshold "
                    f"{self.pixel:.6g} (conformal risk control); promised: {self.promise()}; {self.precision} scores")
        image = (f"F1-max between {normals} and {self.n_anomalies} reference anomalies"
                 if self.method == "f1" else f"at {self.fpr:.3g} FPR ({how[self.method]} {normals})")
        return (f"image threshold {self.image:.6g}, {image}; pixel threshold {self.pixel:.6g} at "
                f"{self.pixel_fpr:.3g} FPR (empirical, normal pixels); no promise; {self.precision} scores")

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


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _pct(rate: float) -> str:
    return f"{100 * rate:.3g} %"


def conformal_rank(n: int, fpr: float, delta: float) -> int | None:
    """The smallest rank k (1-based) whose order statistic of n normal scores has a false-positive rate <= ``fpr``
    with probability >= 1 - ``delta``: ``P(Binomial(n, 1 - fpr) <= k - 1) >= 1 - delta``; None where k = n fails."""
    from scipy.stats import binom

    if n < 1:
        return None
    ok = binom.cdf(np.arange(n), n, 1.0 - fpr) >= 1.0 - delta  # index k - 1
    return int(np.argmax(ok)) + 1 if ok.any() else None


def best_promise(n: int, delta: float) -> float:
    """The lowest image FPR that n normals can promise with probability >= 1 - delta (their maximum's)."""
    return 1.0 - delta ** (1.0 / n) if n > 0 else 1.0


def normals_needed(fpr: float, delta: float) -> int:
    """How many normals the promise "FPR <= fpr with probability >= 1 - delta" needs: ``(1 - fpr) ** n <= delta``."""
    return int(math.ceil(math.log(delta) / math.log1p(-fpr) - 1e-9))


def pixel_rate(n: int, pixel_fpr: float) -> float:
    """Conformal risk control: the pooled share of the n normals' pixels the threshold may leave above it so that a
    new normal image's expected share is <= ``pixel_fpr`` (per-image shares lie in [0, 1]): ``((n + 1) pixel_fpr -
    1) / n``; negative where n is too few (``n < 1 / pixel_fpr - 1``)."""
    return ((n + 1) * pixel_fpr - 1.0) / n if n > 0 else -1.0


def check_conformal(n: int, cfg: ThresholdConfig, source: str = "calibration") -> None:
    """One line where ``n`` normals cannot make the promise ``cfg`` asks for (``threshold.method=conformal``)."""
    if cfg.method != "conformal":
        return
    short = []
    if conformal_rank(n, cfg.fpr, cfg.delta) is None:
        short.append(f"an image FPR of at best {_pct(best_promise(n, cfg.delta))} with probability "
                     f"{_pct(1 - cfg.delta)}, not {_pct(cfg.fpr)} (that needs {normals_needed(cfg.fpr, cfg.delta)})")
    if pixel_rate(n, cfg.pixel_fpr) < 0:
        short.append(f"a pixel FPR of at best {_pct(1 / (n + 1))} in expectation, not {_pct(cfg.pixel_fpr)} (that "
                     f"needs {math.ceil(1 / cfg.pixel_fpr - 1 - 1e-9)})")
    if short:
        raise ConfigError(f"{n} {source} normals can promise {' and '.join(short)}: add normals, ask a higher "
                          "--fpr / --pixel-fpr, or pass --threshold-method auto for thresholds without a promise")


def _promise(n: int, cfg: ThresholdConfig, used: str) -> dict:
    """A threshold's ``delta`` and ``rank`` fields: the conformal promise's, zero where the method makes none."""
    if used != "conformal":
        return {"delta": 0.0, "rank": 0}
    return {"delta": cfg.delta, "rank": conformal_rank(n, cfg.fpr, cfg.delta)}


def image_threshold(normal: np.ndarray, anomalous: np.ndarray, cfg: ThresholdConfig,
                    source: str = "validation") -> tuple[float, str]:
    """``(threshold, method used)`` for the normals' image scores ``normal`` under ``cfg``."""
    normal = np.asarray(normal, np.float64)
    n = len(normal)
    if n < 2:
        raise ConfigError(f"a threshold needs at least 2 {source} normals, got {n}"
                          + (": raise data.val_fraction" if source == "validation" else ""))
    method = cfg.method
    if method == "conformal":
        check_conformal(n, cfg, source)
        return float(np.sort(normal)[conformal_rank(n, cfg.fpr, cfg.delta) - 1]), method
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


def pixel_quantile(values: np.ndarray, rate: float) -> float:
    """The smallest of the values such that at most ``floor(rate * N)`` of the N values lie strictly above it."""
    values = np.asarray(values).ravel()
    above = min(int(math.floor(max(rate, 0.0) * values.size)), values.size - 1)
    return float(np.partition(values, values.size - 1 - above)[values.size - 1 - above])


def summary(values: np.ndarray, size: int = SUMMARY) -> list[float]:
    """``values`` sorted, or ``size`` of their evenly spaced quantiles where there are more (the drift alarm's
    reference: a two-sample test reads a distribution, not the individual images)."""
    values = np.sort(np.asarray(values, np.float64).ravel())
    if values.size > size:
        values = np.quantile(values, np.linspace(0.0, 1.0, size))
    return [float(v) for v in values]


def fit_threshold(normal_scores: np.ndarray, anomaly_scores: np.ndarray, normal_maps: np.ndarray,
                  cfg: ThresholdConfig, precision: str = "fp32", scoring: dict | None = None,
                  stats: dict[str, np.ndarray] | None = None, **about) -> Threshold:
    """The thresholds of ``cfg`` from normals' image scores and maps (and the anomalies' scores). ``stats``: the
    normals' image statistics (``brightness``, ``contrast``, ``warmth``: the drift alarm's reference); ``about``: where the
    normals came from (``source``, ``normals_from``, ``excluded``, ``channels``: fields of ``Threshold``)."""
    cfg.validate()
    source = about.get("source", "validation")
    n = len(normal_scores)
    image, used = image_threshold(normal_scores, anomaly_scores, cfg, source)
    sample = np.asarray(normal_maps, np.float32).ravel()
    tail = pixel_tail(sample)
    promise = _promise(n, cfg, used)
    pixel = (pixel_quantile(sample, pixel_rate(n, cfg.pixel_fpr)) if promise["rank"]
             else pixel_from_tail(tail, cfg.pixel_fpr))
    stats = {k: summary(v) for k, v in (stats or {}).items()}
    return Threshold(image=image, pixel=pixel, fpr=cfg.fpr, pixel_fpr=cfg.pixel_fpr,
                     method=used, requested=cfg.method, n_normals=n, n_anomalies=len(anomaly_scores),
                     normal_scores=[float(s) for s in normal_scores],
                     anomaly_scores=[float(s) for s in anomaly_scores],
                     pixel_tail=tail, pixel_median=float(np.median(sample)), precision=precision,
                     scoring=dict(scoring or {}), **promise, **stats, **about)


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """False-positive and false-negative rates of ``score > threshold`` (NaN where a class is absent)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    flagged = scores > threshold
    normal, anomalous = labels == 0, labels == 1
    return {"fpr": float(flagged[normal].mean()) if normal.any() else float("nan"),
            "fnr": float((~flagged[anomalous]).mean()) if anomalous.any() else float("nan")}


__all__ = ["MIN_EXCEEDANCES", "THRESHOLD_METHODS", "Threshold", "best_promise", "check_conformal", "conformal_rank",
           "fit_threshold", "f1_threshold", "gumbel_quantile", "image_threshold", "normal_quantile", "normals_needed",
           "pixel_from_tail", "pixel_quantile", "pixel_rate", "pixel_tail", "rates", "summary"]
