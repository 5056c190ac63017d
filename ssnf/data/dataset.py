"""Samples as tensors: resized images in [0, 1] and their masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssnf.data.io import open_image, open_mask
from ssnf.data.layouts import Sample
from ssnf.errors import DataError


def resize_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An RGB image (PIL, or ``uint8 [H, W, 3]``) at ``size x size``, bilinear (antialiased): how every image the
    model sees is resized, in training and at inference."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {tuple(image.shape)}")
        image = Image.fromarray(image)
    return np.array(image.resize((size, size), Image.BILINEAR))


def load_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 [S, S, 3], mask bool [S, S])``: bilinear (antialiased) for the image, nearest for the mask."""
    image = open_image(sample.image)
    if sample.mask is not None:
        mask_img = open_mask(sample.mask, (image.height, image.width))
        mask = np.asarray(mask_img.resize((size, size), Image.NEAREST)) > 0
    else:
        mask = np.zeros((size, size), dtype=bool)
    return resize_image(image, size), mask


@dataclass
class DecodedSplit:
    """A split decoded at the model's input size: it travels (Ray's object store) where its files do not."""

    samples: list[Sample]
    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # bool [N, S, S]

    def __len__(self) -> int:
        return len(self.samples)


def decode_split(samples: Sequence[Sample], size: int) -> DecodedSplit:
    """Every image and mask of ``samples`` through ``load_pair``."""
    pairs = [load_pair(s, size) for s in samples]
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, size, size), bool)
    return DecodedSplit(list(samples), images, masks)


class ImageDataset(Dataset):
    """Items: ``image`` float32 [3, S, S] in [0, 1], ``mask`` float32 [1, S, S], ``label``,
    ``has_mask`` (False for an anomalous image without annotation) and ``path``."""

    def __init__(self, samples: Sequence[Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        image, mask = load_pair(sample, self.image_size)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(mask).float().unsqueeze(0),
            "label": torch.tensor(sample.label, dtype=torch.long),
            "has_mask": torch.tensor(sample.label == 0 or sample.mask is not None),
            "path": str(sample.image),
        }
