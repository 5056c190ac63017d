"""Reading images and masks, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ssnf.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (an absent folder has none)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def open_image(path: Path) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB PIL image; grey, palette, alpha and 16-bit images included."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                im = Image.fromarray(to_uint8(np.asarray(im), sixteen_bit=im.mode.startswith("I;16")))
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}".splitlines()[0]) from None


def to_uint8(values: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """8-bit grey levels of a 16-bit, 32-bit integer or float image: scaled from 0-65535 when it is 16-bit (or
    exceeds 255), else taken as 0-255; how every such image, file or array, becomes ``uint8``."""
    arr = np.asarray(values, dtype=np.float32)
    hi = 65535.0 if sixteen_bit or arr.max(initial=0.0) > 255 else 255.0
    return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """``uint8`` array ``[H, W, 3]``."""
    return np.asarray(open_image(path))


def image_hw(path: Path) -> tuple[int, int]:
    """Height and width from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}".splitlines()[0]) from None


def open_mask(path: Path, expect_hw: tuple[int, int] | None = None) -> Image.Image:
    """A binary mask as a PIL ``L`` image with values 0/255.

    Masks stored as 0/255 (MVTec, DAGM) or 0/1 label images are both read correctly; any colour mask
    counts a pixel as anomalous where its grey value is at least half the maximum.
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}".splitlines()[0]) from None
    if expect_hw is not None and arr.shape[:2] != tuple(expect_hw):
        raise DataError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {expect_hw[1]}x{expect_hw[0]} (width x height)"
        )
    binary = arr > 0 if arr.max() <= 1 else arr >= (128 if arr.max() <= 255 else 32768)
    return Image.fromarray((binary * 255).astype(np.uint8), mode="L")


def read_mask(path: Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """``bool`` array ``[H, W]``: True where the mask marks an anomaly."""
    return np.asarray(open_mask(path, expect_hw)) > 0
