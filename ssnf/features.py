"""Frozen-backbone features, computed once and cached.

The backbone never trains, so the features of the normal images are a pure function of the backbone
(architecture, strides, exact weights), the image size and the image files' bytes. ``FeatureCache``
keys a file under ``$SSNF_FEATURES_DIR`` (default ``$SSNF_CACHE_DIR/features``) by exactly those, so an epoch costs little more than
the flow, and every trial of a sweep on the same data reuses one extraction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssnf.backbones.extractor import FeatureExtractor
from ssnf.data.dataset import load_pair
from ssnf.data.layouts import Sample
from ssnf.devices import to_device
from ssnf.files import atomic_path
from ssnf.paths import features_dir


def load_images(samples: Sequence[Sample], size: int) -> np.ndarray:
    """Decoded, resized images ``uint8 [N, S, S, 3]``."""
    return np.stack([load_pair(s, size)[0] for s in samples]) if samples else np.zeros((0, size, size, 3), np.uint8)


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``uint8 [N, S, S, 3]`` -> float ``[N, 3, S, S]`` in [0, 1] on ``device`` (the bytes travel as uint8, through
    pinned memory to a GPU: ``ssnf.devices.to_device``)."""
    return to_device(torch.from_numpy(np.ascontiguousarray(images)), device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def extract(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 32,
            device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Features of ``images`` per scale, ``[N, C, h, w]`` on the CPU."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        feats = extractor(to_tensor(images[start:start + batch_size], device))
        chunks.append([f.cpu() for f in feats])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(extractor.channels))]


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    digest = hashlib.sha256()
    described = [extractor.name, list(extractor.strides), extractor.mean.flatten().tolist(),
                 extractor.std.flatten().tolist()]
    if extractor.precision != "fp32":  # float32 keys stay those of the versions before train.precision
        described.append(extractor.precision)
    digest.update(json.dumps(described).encode())
    for key, tensor in extractor.body.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha1(Path(path).read_bytes()).digest())
    return digest.hexdigest()


class FeatureCache:
    """Features of a list of images for one extractor and size, on disk under a content key."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else features_dir()
        self.hits = 0
        self.misses = 0

    def key(self, extractor: FeatureExtractor, samples: Sequence[Sample], size: int) -> str:
        parts = [extractor_fingerprint(extractor), str(size), files_fingerprint([s.image for s in samples])]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def features(self, extractor: FeatureExtractor, samples: Sequence[Sample], images: np.ndarray, size: int,
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Cached features of ``samples`` (whose decoded ``images`` are given), computing them on a miss."""
        path = self.root / f"{self.key(extractor, samples, size)}.pt"
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                feats = stored["features"]
                if len(feats) == len(extractor.channels) and all(len(f) == len(samples) for f in feats):
                    self.hits += 1
                    return feats
            except Exception:  # a damaged cache file is recomputed, never trusted
                pass
        self.misses += 1
        feats = extract(extractor, images, device=device)
        with atomic_path(path) as tmp:
            torch.save({"features": feats}, tmp)
        return feats
