"""The training synthesis: patches cut from another normal image and blended into a normal image.

Our implementation of the recipe the paper uses (NSA, Schlüter et al. 2022): the first patch always,
each further one with probability ``p_extra``; half-widths drawn from a shifted gamma distribution and
clipped; the cut patch optionally rescaled and shifted; optionally placed on the object only (foreground
from an Otsu threshold on intensity, or ``object_region``: what departs from the border's background in
colour or local contrast); Poisson (``cv2.seamlessClone``), feathered-alpha or plain blending.

The returned mask is exact: the pixels inside the pasted patches whose mean absolute change exceeds
``label_tol`` grey levels, i.e. what really changed.
"""

from __future__ import annotations

import cv2
import numpy as np

from ssnf.config import SynthesisConfig

_MIN_POISSON_AREA = 50  # seamlessClone fails on tiny masks
OBJECT_SHARE = (0.05, 0.95)  # an object region must cover this share of the image ...
OBJECT_BORDER = 0.1  # ... and at most this share of the image border
DEVIATION = 3.0  # object pixels differ from the border's background by this many times its median spread
OBJECT_IMAGES = 0.9  # a category has objects when this share of its images has one (else: a texture)


def foreground_mask(image: np.ndarray, polarity: str = "auto") -> np.ndarray:
    """Object pixels of ``image`` (uint8 [H, W, 3]) by an Otsu threshold on intensity.

    ``auto`` takes the object to be the side of the threshold that covers less of the image border.
    """
    grey = cv2.GaussianBlur(image.mean(axis=2).astype(np.uint8), (5, 5), 0)
    _, above = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    above = above.astype(bool)
    if polarity == "auto":
        border = np.concatenate([above[0], above[-1], above[:, 0], above[:, -1]])
        polarity = "dark" if border.mean() > 0.5 else "bright"
    fg = above if polarity == "bright" else ~above
    return cv2.medianBlur(fg.astype(np.uint8), 7).astype(bool)


def object_region(image: np.ndarray) -> np.ndarray | None:
    """The object of ``image`` (uint8 [S, S, 3]) as a bool mask, or ``None`` for a texture / no object.

    The background is modelled on the image border: its median colour and median local contrast. A pixel is
    on the object when its local mean colour or its local contrast departs from those by ``DEVIATION``
    times the border's own median departure; the largest connected part is kept, its holes filled. Dark
    objects on dark backgrounds (a tyre) are found by their contrast, flat objects by their colour."""
    size = min(image.shape[:2])
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


def object_regions(images) -> list[np.ndarray | None]:
    """``object_region`` of each image of one category, all ``None`` (a texture) unless at least
    ``OBJECT_IMAGES`` of them have one: a few spurious regions in a texture do not make it an object."""
    regions = [object_region(img) for img in images]
    if sum(r is not None for r in regions) < OBJECT_IMAGES * len(regions):
        return [None] * len(regions)
    return regions


def foreground(image: np.ndarray, cfg: SynthesisConfig) -> np.ndarray | None:
    """Where ``synthesis.foreground`` puts the object of ``image``: ``object_region`` (``None``: no object,
    patches go anywhere) or a side of the intensity threshold (``foreground_mask``)."""
    if cfg.foreground == "object":
        return object_region(image)
    return foreground_mask(image, cfg.foreground)


def _half_width(rng: np.random.Generator, side: int, cfg: SynthesisConfig) -> int:
    frac = cfg.gamma_offset + rng.gamma(cfg.gamma_shape, cfg.gamma_scale)
    lo, hi = max(1, round(cfg.width_min * side)), max(1, round(cfg.width_max * side))
    return int(np.clip(round(frac * side), lo, hi))


def _place(rng: np.random.Generator, shape: tuple[int, int], hh: int, hw: int, fg: np.ndarray | None,
           min_object: float) -> tuple[int, int]:
    """Top-left corner of a ``2hh x 2hw`` box inside ``shape`` (one pixel from the border), on ``fg`` if given."""
    h, w = shape
    ys = (1, max(2, h - 2 * hh - 1))
    xs = (1, max(2, w - 2 * hw - 1))
    for _ in range(100):
        y, x = int(rng.integers(*ys)), int(rng.integers(*xs))
        if fg is None or fg[y:y + 2 * hh, x:x + 2 * hw].mean() >= min_object:
            return y, x
    return int(rng.integers(*ys)), int(rng.integers(*xs))  # no placement on the object: anywhere


def _blend(dest: np.ndarray, patch: np.ndarray, y: int, x: int, mode: str, sigma_frac: float) -> np.ndarray:
    ph, pw = patch.shape[:2]
    if mode == "poisson" and (ph - 2) * (pw - 2) >= _MIN_POISSON_AREA:
        mask = np.full((ph, pw), 255, np.uint8)
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 0
        center = (x + pw // 2, y + ph // 2)
        try:
            return cv2.seamlessClone(patch, dest, mask, center, cv2.NORMAL_CLONE)
        except cv2.error:
            mode = "feather"
    out = dest.copy()
    region = out[y:y + ph, x:x + pw].astype(np.float32)
    if mode == "paste":
        alpha = np.ones((ph, pw, 1), np.float32)
    else:  # feather (also the fallback for patches too small for Poisson blending)
        alpha = np.zeros((ph, pw), np.float32)
        alpha[1:-1, 1:-1] = 1.0
        sigma = max(0.5, sigma_frac * min(ph, pw) / 2)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)[..., None]
        alpha[0, :] = alpha[-1, :] = 0.0
        alpha[:, 0] = alpha[:, -1] = 0.0
    out[y:y + ph, x:x + pw] = np.clip(alpha * patch + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
    return out


def synthesize(target: np.ndarray, source: np.ndarray, rng: np.random.Generator, cfg: SynthesisConfig,
               regions: tuple[np.ndarray | None, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 [H, W, 3], mask bool [H, W])``: ``target`` with patches of ``source`` blended in.

    With ``object_aware``, ``regions`` are the (target, source) objects when the caller computed them
    (``object_regions`` over the category; ``None`` for anywhere), else ``foreground`` finds them."""
    h, w = target.shape[:2]
    if not cfg.object_aware:
        fg_t = fg_s = None
    elif regions is not None:
        fg_t, fg_s = regions
    else:
        fg_t, fg_s = foreground(target, cfg), foreground(source, cfg)
    out = target.copy()
    region = np.zeros((h, w), bool)
    for i in range(cfg.max_patches):
        if i > 0 and rng.random() >= cfg.p_extra:
            continue
        hh, hw = _half_width(rng, h, cfg), _half_width(rng, w, cfg)
        sy, sx = _place(rng, (h, w), hh, hw, fg_s, cfg.min_object)
        patch = source[sy:sy + 2 * hh, sx:sx + 2 * hw]
        if cfg.resize:
            scale = float(np.clip(rng.normal(1.0, 0.5), cfg.resize_min, cfg.resize_max))
            ph = int(np.clip(round(patch.shape[0] * scale), 4, h - 4))
            pw = int(np.clip(round(patch.shape[1] * scale), 4, w - 4))
            patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
        ph, pw = patch.shape[:2]
        if cfg.shift:
            dy, dx = _place(rng, (h, w), ph // 2, pw // 2, fg_t, cfg.min_object)
        else:
            dy, dx = int(np.clip(sy, 1, h - ph - 1)), int(np.clip(sx, 1, w - pw - 1))
        out = _blend(out, np.ascontiguousarray(patch), dy, dx, cfg.blend, cfg.feather_sigma)
        region[dy:dy + ph, dx:dx + pw] = True
    change = np.abs(out.astype(np.int16) - target.astype(np.int16)).mean(axis=2)
    return out, region & (change > cfg.label_tol)


def synthetic_batch(images: np.ndarray, idx: np.ndarray, rng: np.random.Generator, cfg: SynthesisConfig,
                    regions: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomaly per ``images[i]`` for ``i`` in ``idx``, with patches from another image of
    ``images`` drawn by ``rng``: ``(uint8 [B, S, S, 3], bool masks [B, S, S])``. ``regions``: every image's
    ``object_regions`` entry, for ``foreground=object``."""
    n = len(images)
    out, masks = [], []
    for i in idx:
        j = int(rng.integers(n - 1))
        j = j + 1 if j >= i else j  # another image as the source
        image, mask = synthesize(images[i], images[j], rng, cfg, None if regions is None else (regions[i], regions[j]))
        out.append(image)
        masks.append(mask)
    return np.stack(out), np.stack(masks)
