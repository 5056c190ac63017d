"""The drift alarm: do a run's images still look like the good parts the thresholds were calibrated on?

A threshold keeps what it rests on (``ssnf.threshold.Threshold``): its normals' image scores, and three cheap
image statistics of each normal, the mean grey level (``brightness``), its standard deviation (``contrast``) and
the mean red minus the mean blue (``warmth``: the light's colour), taken on the image as the model sees it
(``Detector.prepare``: resized, RGB). ``check`` compares a run's images with them, and the alarm fires when any
test rejects at ``level`` (Bonferroni over the tests run):

- **flagged**: how many images lie over the threshold, against what the calibration allows. The threshold sits
  at the k-th smallest of n normal scores, and for good parts exchangeable with those normals the share of a new
  image above it is Beta(n - k + 1, k)-distributed whatever the scores' law (k: the normals at or below the
  threshold, for a threshold between two scores), so the count over m images is beta-binomial: an exact p-value
  with no fitted tail, which holds for every threshold method. Real defects raise this count too: the message
  says so.
- **scores**, **brightness**, **contrast**, **warmth**: two-sample Kolmogorov-Smirnov tests of the run's values against the
  normals' (the whole distribution: a darker session moves brightness before any part is flagged). A run with a
  few defective parts barely moves a KS statistic (at most their share).

Fewer than ``MIN_IMAGES`` images in a run: no check (a statement, not an alarm). Test images never come here:
``ssnf predict`` calls it on what it scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ssnf.errors import SSNFError

MIN_IMAGES = 10  # fewer images in a run: too few to tell a drift from chance
LEVEL = 0.01  # the alarm's false-alarm rate for good parts like the calibration normals (all tests together)
STATS = ("brightness", "contrast", "warmth")


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """``uint8 [N, S, S, 3]`` -> per image ``brightness`` (mean grey level, 0-1), ``contrast`` (its standard
    deviation) and ``warmth`` (mean red minus mean blue, 0 for grey images); grey = the mean of the channels."""
    pixels = np.asarray(images, np.float32) / 255.0
    grey = pixels.mean(axis=3)
    return {"brightness": grey.mean(axis=(1, 2)), "contrast": grey.std(axis=(1, 2)),
            "warmth": pixels[..., 0].mean(axis=(1, 2)) - pixels[..., 2].mean(axis=(1, 2))}


@dataclass
class Test:
    name: str  # flagged | scores | brightness | contrast | warmth
    p: float  # the p-value
    statistic: float  # flagged: the count; KS: the statistic D
    run: float  # flagged: the count; else the run's median
    reference: float  # flagged: the expected count; else the normals' median
    spread: float = 0.0  # flagged: the expected count's standard deviation


@dataclass
class DriftReport:
    images: int  # the run's scored images
    level: float
    tests: list[Test] = field(default_factory=list)
    fired: bool = False
    note: str = ""  # why no check ran

    def lines(self) -> list[str]:
        """The plain statement: one line per test that rejects, and the verdict."""
        if self.note:
            return [f"drift check: {self.note}"]
        out = []
        for t in self.tests:
            if t.p >= self.level / len(self.tests):
                continue
            if t.name == "flagged":
                out.append(f"{int(t.run)} of {self.images} images over the threshold; {t.reference:.3g} ± "
                           f"{t.spread:.2g} expected from calibration (p = {t.p:.2g})")
            else:
                out.append(f"{t.name} moved: median {t.run:.4g} against {t.reference:.4g} in calibration "
                           f"(KS D = {t.statistic:.2f}, p = {t.p:.2g})")
        if not out:
            return [f"drift check: {self.images} images look like the calibration normals (no test rejects at "
                    f"{self.level:g})"]
        return [f"DRIFT ALARM: {line}" for line in out] + [
            "DRIFT ALARM: the line may have changed (or more parts are defective): check the parts, then "
            "recalibrate on today's good parts (ssnf calibrate --normals ...)"]

    def to_dict(self) -> dict:
        return asdict(self) | {"message": self.lines()}


def flagged_test(normal_scores: np.ndarray, threshold: float, scores: np.ndarray) -> Test:
    """The count of ``scores`` above ``threshold`` against the beta-binomial law of exchangeable good parts."""
    from scipy.stats import betabinom

    normal = np.asarray(normal_scores, np.float64)
    n, m = len(normal), len(scores)
    k = int(np.sum(normal <= threshold))  # the threshold lies at or above the k-th smallest normal score
    count = int(np.sum(np.asarray(scores) > threshold))
    a, b = n - k + 1, max(k, 1)
    law = betabinom(m, a, b)
    return Test("flagged", float(law.sf(count - 1)), float(count), float(count), float(law.mean()), float(law.std()))


def ks_test(name: str, reference: np.ndarray, values: np.ndarray) -> Test:
    from scipy.stats import ks_2samp

    result = ks_2samp(values, reference)
    return Test(name, float(result.pvalue), float(result.statistic), float(np.median(values)),
                float(np.median(reference)))


def check(threshold, scores: np.ndarray, stats: dict[str, np.ndarray] | None = None,
          level: float = LEVEL) -> DriftReport:
    """The run's image ``scores`` (and ``stats``: ``image_stats`` of its images) against what ``threshold`` rests
    on. A threshold that keeps no normals (older checkpoints): one line."""
    if not 0.0 < level < 1.0:
        raise SSNFError(f"--alarm-level {level} must lie in (0, 1)")
    if threshold is None or not threshold.normal_scores:
        raise SSNFError("this model keeps no calibration normals for a drift check: calibrate it again (ssnf "
                        "calibrate --checkpoint ... [--normals ...]), or pass --drift off")
    scores = np.asarray(scores, np.float64)
    report = DriftReport(len(scores), level)
    if len(scores) < MIN_IMAGES:
        report.note = f"{len(scores)} images: a drift check needs at least {MIN_IMAGES} in a run"
        return report
    report.tests.append(flagged_test(threshold.normal_scores, threshold.image, scores))
    report.tests.append(ks_test("scores", np.asarray(threshold.normal_scores), scores))
    for name in STATS:
        reference = getattr(threshold, name)
        if reference and stats is not None and name in stats:
            report.tests.append(ks_test(name, np.asarray(reference), np.asarray(stats[name])))
    report.fired = any(t.p < level / len(report.tests) for t in report.tests)
    return report


__all__ = ["LEVEL", "MIN_IMAGES", "DriftReport", "Test", "check", "flagged_test", "image_stats", "ks_test"]
