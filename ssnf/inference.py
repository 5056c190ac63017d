"""The one inference path: a trained detector behind one object, images in, anomaly maps and scores out.

``Detector`` owns everything between an image and its score, so that no caller can resize, normalise or
score differently: images of any size are resized the way the training images were (``ssnf.data.dataset``),
the backbone normalises them, the flows run in the precision the model was trained in (``train.precision``)
and the scoring is the config's, with its ``auto`` settings taken from the choice made on validation.
``evaluate``, the sweep's test pass and the benchmarks all call it.

    detector = Detector.load("runs/tire/checkpoint.pt")
    prediction = detector.predict_files(["part.png"])    # or detector.predict(uint8 arrays)
    prediction.scores, prediction.maps                     # [N], [N, S, S]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssnf.config import ScoringConfig, SSNFConfig
from ssnf.data.dataset import resize_image
from ssnf.data.io import open_image
from ssnf.features import to_tensor
from ssnf.model.detector import SSNFModel
from ssnf.scoring import resolve, score


@dataclass
class Prediction:
    scores: np.ndarray  # [N] image scores (higher: more anomalous)
    maps: np.ndarray  # [N, S, S] float32 anomaly maps at the model's input size


class Detector:
    """A trained ``SSNFModel`` with its config: ``predict`` on images, ``predict_features`` on features."""

    def __init__(self, model: SSNFModel, cfg: SSNFConfig, device: str | torch.device | None = None,
                 batch_size: int = 32) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.model.set_precision(cfg.train.precision)
        self.scoring: ScoringConfig = resolve(cfg.scoring, model.scoring)
        self.batch_size = batch_size

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "cpu", **kwargs) -> "Detector":
        """The detector saved in ``checkpoint`` (``ssnf.checkpoint``), on ``device``."""
        from ssnf.checkpoint import load_checkpoint

        ckpt = load_checkpoint(Path(checkpoint), device)
        return cls(ckpt.model, ckpt.config, device, **kwargs)

    @classmethod
    def build(cls, cfg: SSNFConfig, device: str | torch.device = "cpu", **kwargs) -> "Detector":
        """An untrained detector of ``cfg`` (its flows at their initialisation): for timing and tests."""
        return cls(SSNFModel.build(cfg.backbone, cfg.model, cfg.train.seed), cfg, device, **kwargs)

    @property
    def size(self) -> int:
        return self.cfg.data.image_size

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """RGB ``uint8`` images ``[H, W, 3]`` of any size -> ``uint8 [N, S, S, 3]`` at the model's size."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (self.size, self.size):
            return images
        return np.stack([resize_image(np.asarray(image), self.size) for image in images])

    @torch.no_grad()
    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> Prediction:
        """Scores and maps of RGB ``uint8`` images (``[N, H, W, 3]`` or a list of ``[H, W, 3]``)."""
        images = self.prepare(images)
        return self._scored(len(images), lambda start, end: self.model.extractor(to_tensor(images[start:end],
                                                                                          self.device)))

    def predict_files(self, paths: Sequence[str | Path]) -> Prediction:
        """Scores and maps of image files (decoded as the training images were)."""
        return self.predict([np.asarray(open_image(Path(p))) for p in paths])

    @torch.no_grad()
    def predict_features(self, features: list[torch.Tensor]) -> Prediction:
        """Scores and maps from backbone features already extracted (per scale ``[N, C, h, w]``)."""
        return self._scored(len(features[0]), lambda start, end: [f[start:end].to(self.device) for f in features])

    def _scored(self, n: int, batch_features) -> Prediction:
        """Flows and scoring over ``n`` items, ``batch_features(start, end)`` giving each batch's features."""
        self.model.eval()
        scores, maps = [], []
        for start in range(0, n, self.batch_size):
            outputs = self.model.flow_features(batch_features(start, min(n, start + self.batch_size)))
            m, s = score(outputs, self.scoring, (self.size, self.size))
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
        return _joined(scores, maps, self.size)


def _joined(scores: list[np.ndarray], maps: list[np.ndarray], size: int) -> Prediction:
    if not scores:
        return Prediction(np.zeros(0, np.float32), np.zeros((0, size, size), np.float32))
    return Prediction(np.concatenate(scores), np.concatenate(maps).astype(np.float32, copy=False))
