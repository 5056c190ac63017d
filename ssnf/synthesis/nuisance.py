"""Nuisance transforms: what a good part can look like after the line drifts, and still be a good part.

A detector that flags every good image after a change of lighting is not a good detector. Validation therefore
holds, beside the clean held-out normals and the reference defects, held-out normals under *nuisance
transforms* (``data.nuisance``), scored as normals: a config that flags them scores lower. The same families
serve as training augmentation (``train.augment``), drawn from training's own random stream on training images.

Families and their parameters (``Nuisance``; applied in this order, on ``uint8 [S, S, 3]`` images at the model's
size):

- geometric: a translation (share of the side), a rotation (degrees) and a scale about the centre, borders
  reflected;
- photometric: a global brightness gain, a contrast gain about the image mean, a gamma, a colour temperature
  (red and blue gains in opposite directions), a Gaussian blur (sigma in pixels), Gaussian noise (sigma in grey
  levels / 255).

Magnitudes (``NuisanceRanges``) are measured per category from its training images where the images show them
(``measure_ranges``): twice the spread (standard deviation of the log) of the images' mean brightness and red/blue
balance, between a floor that stands for an ordinary drift of a line (``FLOORS``) and a cap (``CAPS``); the
translation is the 90th percentile of the training images' own offsets from their median image (phase
correlation), between ``SHIFT_MIN`` and ``SHIFT_MAX`` of the side, and rotation and scale grow with it: an
aligned part is moved only as much as its training images move, an object that moves about (or a texture,
which has no position) up to the caps. Contrast, gamma, blur and noise have fixed ranges (an image's contrast
measures its content as much as its light; a drifting focus or sensor).

Validation draws one transform of its family per nuisance normal, at 50-100 % of its range with a random sign
(``draw(..., strong=True)``): one drift at a time, and one that is there. Augmentation draws each transform of
its family with probability 1/2 (at least one), anywhere in its range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

PHOTOMETRIC = ("brightness", "contrast", "gamma", "colour", "blur", "noise")
GEOMETRIC = ("shift", "rotate", "scale")
FAMILIES = {"none": (), "photometric": PHOTOMETRIC, "geometric": GEOMETRIC, "full": PHOTOMETRIC + GEOMETRIC}
COPIES = 2  # nuisance normals per held-out normal image (data.nuisance)
# measured magnitudes (half-ranges; log gains, colour: log red/blue) are clipped to [floor, cap]: the floor stands for
# an ordinary drift of a line, the cap keeps a category whose images vary a lot from drifting into another product
FLOORS = {"brightness": math.log(1.08), "colour": 0.03}
CAPS = {"brightness": math.log(1.25), "colour": 0.10}
CONTRAST = math.log(1.10)  # contrast gain in [1/1.1, 1.1] (an image's spread measures its content more than its light)
GAMMA = math.log(1.10)  # gamma in [1/1.1, 1.1]
BLUR = 0.8  # sigma in pixels at the model's size, at most (a slight loss of focus)
NOISE = 1.5 / 255  # sigma, at most (a noisier sensor or a shorter exposure)
# translation, share of the side; small: the borders are reflected, and a wide reflected band is itself a change
SHIFT_MIN, SHIFT_MAX = 0.01, 0.03
ROTATE_MAX = 3.0  # degrees, at SHIFT_MAX (proportional below)
SCALE_MAX = math.log(1.04)  # log scale, at SHIFT_MAX (proportional below)


@dataclass(frozen=True)
class NuisanceRanges:
    """Half-ranges of each transform's parameter for one category (see the module docstring)."""

    brightness: float = FLOORS["brightness"]
    contrast: float = CONTRAST
    gamma: float = GAMMA
    colour: float = FLOORS["colour"]
    blur: float = BLUR
    noise: float = NOISE
    shift: float = SHIFT_MAX
    rotate: float = ROTATE_MAX
    scale: float = SCALE_MAX

    def scaled(self, factor: float) -> "NuisanceRanges":
        return NuisanceRanges(**{k: v * factor for k, v in asdict(self).items()})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Nuisance:
    """One drawn transform: the parameters that differ from the identity (missing: not applied)."""

    params: dict = field(default_factory=dict)
    seed: int = 0  # the noise's stream

    @property
    def name(self) -> str:
        return "+".join(self.params) or "identity"


def _log_spread(values: np.ndarray) -> float:
    values = np.log(np.maximum(np.asarray(values, np.float64), 1e-6))
    return float(values.std()) if len(values) > 1 else 0.0


def image_offsets(images: np.ndarray, side: int = 128) -> np.ndarray:
    """Each image's offset from the median image (phase correlation of grey images at ``side`` px), as a share
    of the side."""
    grey = np.stack([cv2.resize(im.mean(axis=2).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
                     for im in images])
    ref = np.median(grey, axis=0).astype(np.float32)
    window = cv2.createHanningWindow((side, side), cv2.CV_32F)
    shifts = [math.hypot(*cv2.phaseCorrelate(ref, g, window)[0]) for g in grey]
    return np.asarray(shifts) / side


def measure_ranges(images: np.ndarray, textured: bool) -> NuisanceRanges:
    """The nuisance magnitudes of a category from its training ``images`` (uint8 ``[N, S, S, 3]``); ``textured``:
    a texture category (no object: any small translation, rotation or scale is as normal as the next)."""
    x = images.astype(np.float32) / 255.0
    grey = x.mean(axis=3)
    measured = {
        "brightness": 2 * _log_spread(grey.mean(axis=(1, 2))),
        "colour": 2 * _log_spread((x[..., 0].mean(axis=(1, 2)) + 1e-3) / (x[..., 2].mean(axis=(1, 2)) + 1e-3)),
    }
    photometric = {k: float(np.clip(v, FLOORS[k], CAPS[k])) for k, v in measured.items()}
    if textured or len(images) < 3:
        shift = SHIFT_MAX
    else:
        shift = float(np.clip(np.quantile(image_offsets(images), 0.9), SHIFT_MIN, SHIFT_MAX))
    share = shift / SHIFT_MAX
    return NuisanceRanges(**photometric, shift=shift, rotate=ROTATE_MAX * share, scale=SCALE_MAX * share)


def draw(rng: np.random.Generator, ranges: NuisanceRanges, family: str, strong: bool = False) -> Nuisance:
    """A random transform of ``family`` (``FAMILIES``). ``strong`` (validation): one transform of the family, at
    50-100 % of its range (one drift at a time, one that is there); else (augmentation) each of the family's
    transforms with probability 1/2 (at least one), anywhere in its range."""
    kinds = FAMILIES[family]
    if not kinds:
        return Nuisance()
    pick = int(rng.integers(len(kinds)))
    chosen = [kinds[pick]] if strong else [k for k in kinds if rng.random() < 0.5] or [kinds[pick]]
    params: dict[str, float] = {}
    for kind in kinds:  # every kind draws, so the stream does not depend on which were chosen
        u = rng.uniform(0.5, 1.0) if strong else rng.uniform(0.0, 1.0)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        angle = rng.uniform(0, 2 * math.pi)
        if kind not in chosen:
            continue
        r = getattr(ranges, kind)
        if kind in ("blur", "noise"):
            params[kind] = u * r
        elif kind == "shift":
            params["shift_x"], params["shift_y"] = u * r * math.cos(angle), u * r * math.sin(angle)
        else:
            params[kind] = sign * u * r
    return Nuisance(params, int(rng.integers(2**31)))


def apply(image: np.ndarray, nuisance: Nuisance) -> np.ndarray:
    """``image`` (uint8 ``[S, S, 3]``) under ``nuisance``."""
    p = nuisance.params
    if not p:
        return image
    out = image
    size = image.shape[0]
    if any(k in p for k in ("shift_x", "rotate", "scale")):
        matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), p.get("rotate", 0.0),
                                         math.exp(p.get("scale", 0.0)))
        matrix[0, 2] += p.get("shift_x", 0.0) * size
        matrix[1, 2] += p.get("shift_y", 0.0) * size
        out = cv2.warpAffine(out, matrix, (image.shape[1], size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    x = out.astype(np.float32) / 255.0
    if "brightness" in p:
        x = x * math.exp(p["brightness"])
    if "contrast" in p:
        mean = x.mean()
        x = (x - mean) * math.exp(p["contrast"]) + mean
    if "gamma" in p:
        x = np.clip(x, 0.0, 1.0) ** math.exp(p["gamma"])
    if "colour" in p:
        t = p["colour"] / 2
        x = x * np.array([math.exp(t), 1.0, math.exp(-t)], np.float32)
    if p.get("blur", 0.0) > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), p["blur"], borderType=cv2.BORDER_REFLECT_101)
    if p.get("noise", 0.0) > 0:
        x = x + np.random.default_rng(nuisance.seed).normal(0.0, p["noise"], x.shape).astype(np.float32)
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def nuisance_set(images: np.ndarray, seed: int, family: str,
                 ranges: NuisanceRanges) -> list[tuple[np.ndarray, str]]:
    """The nuisance normals of held-out normal ``images``: ``COPIES`` per image, ``(image, name)``, image ``i``'s
    drawn from a stream of ``(seed, i)`` of their own (never training's)."""
    out = []
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, 23, i])
        for _ in range(COPIES):
            nuisance = draw(rng, ranges, family, strong=True)
            out.append((apply(image, nuisance), nuisance.name))
    return out


def augment_batch(images: np.ndarray, rng: np.random.Generator, ranges: NuisanceRanges, family: str,
                  p: float) -> tuple[np.ndarray, np.ndarray]:
    """Training augmentation: each of ``images`` (uint8 ``[B, S, S, 3]``) transformed with probability ``p`` by a
    transform of ``family`` anywhere in ``ranges``. Returns the images and which of them changed."""
    out = images.copy()
    changed = np.zeros(len(images), bool)
    for i in range(len(images)):
        if rng.random() < p:
            nuisance = draw(rng, ranges, family)
            out[i] = apply(images[i], nuisance)
            changed[i] = bool(nuisance.params)
    return out, changed
