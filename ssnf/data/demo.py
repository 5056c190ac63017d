"""Procedural demo categories in the MVTec layout, so that a fresh machine needs no real data.

Two categories: ``weave``, a woven-fabric texture, and ``washer``, a shaded metal ring on a dark
belt (an object on a background). Normal images vary (thread phase and period, lighting, position,
rotation, sensor noise). Defects are drawn onto a normal image and change pixels only inside their
mask, which is written exactly: ``scratch`` (thin bright or dark curve), ``hole`` (dark ellipse),
``contamination`` (an irregular coloured blob) and ``color`` (a local hue and brightness shift).
On the washer, defects stay on the part.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ssnf.errors import DataError

DEMO_CATEGORIES = ("weave", "washer")
DEFECTS = ("scratch", "hole", "contamination", "color")
_MARKER = ".ssnf-demo.json"


@dataclass(frozen=True)
class DemoSpec:
    size: int = 256
    n_train: int = 60
    n_test_good: int = 12
    n_per_defect: int = 6
    seed: int = 0


# --- normal images: (rng, size) -> (image float32 [S, S, 3] in [0, 1], foreground bool [S, S]) ---


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Gaussian-blurred white noise with zero mean and unit std; large scales are drawn coarse and upsampled."""
    factor = max(1, int(scale // 2))
    n = max(4, -(-size // factor))
    noise = rng.standard_normal((n, n)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(scale / factor, 0.5))
    if factor > 1:
        blurred = cv2.resize(blurred, (size, size), interpolation=cv2.INTER_CUBIC)
    return (blurred - blurred.mean()) / (blurred.std() + 1e-6)


def render_weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 24.0 * rng.uniform(0.95, 1.05)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * xx / period + px)
    weft = np.sin(2 * np.pi * yy / period + py)
    over = np.sign(np.sin(np.pi * xx / period + px / 2) * np.sin(np.pi * yy / period + py / 2))
    height = np.where(over > 0, 0.6 * np.abs(warp) + 0.2 * weft, 0.6 * np.abs(weft) + 0.2 * warp)
    fibres = 0.06 * _smooth_noise(rng, size, 1.0)
    shade = 0.55 + 0.25 * height + fibres + 0.04 * _smooth_noise(rng, size, size / 6)
    base = np.array([0.80, 0.70, 0.52]) * rng.uniform(0.95, 1.05)
    image = shade[..., None] * base[None, None, :]
    image += rng.normal(0, 0.012, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), np.ones((size, size), dtype=bool)


def render_washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    r = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx)
    r_out, r_in = 0.36 * size * rng.uniform(0.98, 1.02), 0.16 * size * rng.uniform(0.98, 1.02)
    ring = (r <= r_out) & (r >= r_in)
    belt = 0.16 + 0.03 * _smooth_noise(rng, size, 2.0) + 0.02 * _smooth_noise(rng, size, size / 8)
    image = np.repeat(belt[..., None], 3, axis=2) * np.array([0.95, 1.0, 1.05])
    light = rng.uniform(0, 2 * np.pi)
    radial = (r - r_in) / (r_out - r_in)
    metal = 0.62 + 0.16 * np.cos(2 * (theta - light)) + 0.08 * np.cos(np.pi * radial)
    metal += 0.025 * _smooth_noise(rng, size, 1.5)
    metal_rgb = metal[..., None] * np.array([0.97, 0.98, 1.0]) * rng.uniform(0.95, 1.05)
    # anti-aliased rim: blend the ring into the belt over one pixel
    alpha = np.clip(np.minimum(r_out - r, r - r_in) + 0.5, 0, 1)[..., None]
    image = image * (1 - alpha) + metal_rgb * alpha
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), ring


RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "weave": render_weave,
    "washer": render_washer,
}


# --- defects: (rng, image, foreground) -> (image, mask); pixels change only where mask is True ---


def _point_on(rng: np.random.Generator, foreground: np.ndarray, margin: int) -> tuple[int, int]:
    size = foreground.shape[0]
    inner = np.zeros_like(foreground)
    inner[margin:size - margin, margin:size - margin] = foreground[margin:size - margin, margin:size - margin]
    ys, xs = np.nonzero(inner)
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def _scratch(rng, image, fg):
    size = image.shape[0]
    x0, y0 = _point_on(rng, fg, size // 8)
    length = rng.uniform(0.15, 0.35) * size
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0, 1, 32)[:, None]
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    pts = np.array([x0, y0]) + (t - 0.5) * length * d + (4 * t * (1 - t)) * bend * n
    canvas = np.zeros((size, size), dtype=np.uint8)
    thickness = max(1, int(round(size / 128 * rng.uniform(1.0, 2.0))))
    cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thickness, lineType=cv2.LINE_8)
    mask = (canvas > 0) & fg
    tone = rng.choice([0.95, 0.08])
    out = image.copy()
    out[mask] = 0.15 * image[mask] + 0.85 * tone
    return out, mask


def _ellipse_mask(size: int, center: tuple[int, int], axes: tuple[int, int], angle: float) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(canvas, center, axes, angle, 0, 360, 255, -1, lineType=cv2.LINE_8)
    return canvas > 0


def _hole(rng, image, fg):
    size = image.shape[0]
    center = _point_on(rng, fg, size // 10)
    axes = tuple(int(max(2, rng.uniform(0.03, 0.07) * size)) for _ in range(2))
    mask = _ellipse_mask(size, center, axes, rng.uniform(0, 180)) & fg
    out = image.copy()
    depth = 0.04 + 0.03 * rng.random(mask.sum())
    out[mask] = depth[:, None] * np.array([1.0, 0.95, 0.9])
    return out, mask


def _contamination(rng, image, fg):
    size = image.shape[0]
    cx, cy = _point_on(rng, fg, size // 10)
    radius = rng.uniform(0.05, 0.10) * size
    yy, xx = np.mgrid[0:size, 0:size]
    falloff = 1 - np.hypot(xx - cx, yy - cy) / radius
    blob = falloff + 0.5 * _smooth_noise(rng, size, size / 40)
    mask = (blob > 0.35) & (falloff > 0) & fg
    colour = rng.choice(np.array([[0.45, 0.30, 0.12], [0.25, 0.40, 0.18], [0.15, 0.15, 0.15]]))
    texture = 0.85 + 0.15 * _smooth_noise(rng, size, 1.0)[mask]
    out = image.copy()
    out[mask] = 0.25 * image[mask] + 0.75 * colour[None, :] * texture[:, None]
    return out, mask


def _color(rng, image, fg):
    size = image.shape[0]
    cx, cy = _point_on(rng, fg, size // 10)
    axes = (int(rng.uniform(0.06, 0.12) * size), int(rng.uniform(0.06, 0.12) * size))
    mask = _ellipse_mask(size, (cx, cy), axes, rng.uniform(0, 180)) & fg
    gains = np.array([1.0, 1.0, 1.0]) + rng.choice([-1, 1], 3) * rng.uniform(0.25, 0.45, 3)
    out = image.copy()
    out[mask] = np.clip(image[mask] * gains[None, :] + rng.uniform(-0.08, 0.08), 0, 1)
    return out, mask


DEFECT_PAINTERS = {"scratch": _scratch, "hole": _hole, "contamination": _contamination, "color": _color}


def make_defect(rng: np.random.Generator, image: np.ndarray, fg: np.ndarray, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``defect`` on ``image``; retries until the mask covers a visible area."""
    min_area = max(12, int(image.shape[0] ** 2 * 2e-4))
    for _ in range(20):
        out, mask = DEFECT_PAINTERS[defect](rng, image, fg)
        if mask.sum() >= min_area:
            return out, mask
    raise RuntimeError(f"could not place a {defect} defect")  # unreachable for the shipped renderers


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        Image.fromarray(array.astype(np.uint8) * 255, mode="L").save(path, compress_level=1)
    else:
        Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path, compress_level=1)


def generate_category(root: Path, category: str, spec: DemoSpec) -> Path:
    """Write one demo category to ``root/category`` in the MVTec layout; returns that folder.

    The files are written to a temporary sibling folder that replaces the category only when complete,
    so an interrupted run leaves no half category behind.
    """
    if category not in RENDERERS:
        raise DataError(f"unknown demo category {category!r}; choose from {', '.join(RENDERERS)}")
    render = RENDERERS[category]
    final = root / category
    out = root / f".{category}.partial"
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng([spec.seed, list(RENDERERS).index(category)])
    for i in range(spec.n_train):
        _save(out / "train" / "good" / f"{i:03d}.png", render(rng, spec.size)[0])
    for i in range(spec.n_test_good):
        _save(out / "test" / "good" / f"{i:03d}.png", render(rng, spec.size)[0])
    for defect in DEFECTS:
        for i in range(spec.n_per_defect):
            image, fg = render(rng, spec.size)
            bad, mask = make_defect(rng, image, fg, defect)
            _save(out / "test" / defect / f"{i:03d}.png", bad)
            _save(out / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    (out / _MARKER).write_text(json.dumps(asdict(spec), sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return final


def ensure_demo(root: Path, categories: tuple[str, ...] = DEMO_CATEGORIES, spec: DemoSpec = DemoSpec()) -> list[Path]:
    """Generate the demo categories under ``root`` unless they exist with the same spec.

    A category folder that exists without ssnf's demo marker is someone's data: it is never overwritten.
    """
    root = Path(root)
    made = []
    for category in categories:
        folder = root / category
        marker = folder / _MARKER
        if marker.is_file():
            if json.loads(marker.read_text()) == asdict(spec):
                made.append(folder)
                continue
        elif folder.exists():
            raise DataError(f"{folder} exists and is not ssnf demo data: choose another demo root")
        made.append(generate_category(root, category, spec))
    return made
