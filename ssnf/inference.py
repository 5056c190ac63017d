"""The one inference path: a trained detector behind one object, images in, scores, maps and verdicts out.

``Detector`` owns everything around the backend that runs the model (``ssnf.backends``: the PyTorch model
through ``InferencePath``, or an exported TorchScript / ONNX file), so that no caller can resize, normalise,
score or threshold differently: grey images become RGB, each image is resized on the host exactly as training
resized it (the path's own resize is then the identity: it serves callers of an exported file), and the
thresholds set on validation normals (``ssnf.threshold``), one per arithmetic the scores come from, give the
verdicts and masks. ``evaluate``, the sweep's test pass, ``ssnf predict`` and the benchmarks all call it.

    detector = Detector.load("models/tire/checkpoint.pt")   # or model.onnx / model.torchscript
    prediction = detector.predict(["part.png"])              # paths, or uint8 arrays of any size
    prediction.scores, prediction.maps, prediction.anomalous  # [N], [N, S, S], [N] bool
    ssnf.export.export(detector, "tire.onnx", "onnx")  # the layer above: it imports this module
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssnf.backends import (DEPLOY_PRECISION, EXPORT_FORMAT, EXPORT_PRECISION, Backend, EagerBackend, file_kind,
                           open_file, pick_device)
from ssnf.checkpoint import load_checkpoint
from ssnf.config import ScoringConfig, SSNFConfig, ThresholdConfig, from_dict, to_dict
from ssnf.data.dataset import resize_image
from ssnf.data.io import open_image, to_uint8
from ssnf.drift import image_stats
from ssnf.errors import DataError, SSNFError
from ssnf.model.detector import SSNFModel
from ssnf.prepared import ValidationSet
from ssnf.threshold import Threshold, fit_threshold


@dataclass
class Prediction:
    scores: np.ndarray  # [N] image scores (higher: more anomalous)
    maps: np.ndarray  # [N, S, S] float32 anomaly maps at the model's input size
    threshold: Threshold | None = None  # the detector's, when it has one
    stats: dict[str, np.ndarray] | None = None  # per image brightness, contrast (ssnf.drift.image_stats)

    @property
    def anomalous(self) -> np.ndarray:
        """``[N]`` bool verdicts: the image score above the image threshold."""
        return self.scores > self._threshold().image

    @property
    def masks(self) -> np.ndarray:
        """``[N, S, S]`` bool: the map above the pixel threshold."""
        return self.maps > self._threshold().pixel

    def _threshold(self) -> Threshold:
        if self.threshold is None:
            raise SSNFError("this model has no threshold: calibrate it (ssnf calibrate --checkpoint ...)")
        return self.threshold


class Detector:
    """A trained detector: ``predict`` images, ``threshold``; a backend (``ssnf.backends``) with the config it was
    trained with, its thresholds per precision, the batch size and where it came from. ``load`` (a checkpoint or
    an exported file) and ``from_model`` (a model in memory) choose the backend; ``ssnf.export`` writes a file
    from a detector."""

    def __init__(self, backend: Backend, cfg: SSNFConfig, thresholds: dict[str, Threshold] | None = None,
                 batch_size: int = 32, source: Path | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        # per precision (train.precision, fp32): the one place the thresholds live; from_model shares the model's
        # dict, so that what calibrate sets is what the model's checkpoint saves
        self.thresholds: dict[str, Threshold] = {} if thresholds is None else thresholds
        self.batch_size = batch_size
        self.source = source

    @classmethod
    def from_model(cls, model: SSNFModel, cfg: SSNFConfig, device: str | torch.device | None = None,
                   batch_size: int = 32, source: Path | None = None, precision: str | None = None) -> "Detector":
        """``model`` through PyTorch (on ``device``, default: where it is), in ``precision`` (default
        ``cfg.train.precision``: a model in training; what deploys computes in ``DEPLOY_PRECISION``)."""
        return cls(EagerBackend(model, cfg, device, precision), cfg, model.thresholds, batch_size, source)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32,
             threads: int = 0, precision: str = DEPLOY_PRECISION) -> "Detector":
        """The detector in ``path``: an ssnf checkpoint, or a file ``export`` wrote (ONNX or TorchScript).
        ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA where this file's runtime can use it). ``precision``: a
        checkpoint's arithmetic, float32 by default whatever it was trained in (its exported files compute in
        float32: the same scores and verdicts); ``bf16`` runs a checkpoint faster on hardware with bfloat16
        arithmetic, with the thresholds set on bf16 scores (its verdicts then differ from the exported file's)."""
        path = Path(path)
        if not path.is_file():
            raise SSNFError(f"model file {path} does not exist")
        kind = file_kind(path)
        device = pick_device(device, kind)
        if kind == "checkpoint":
            ckpt = load_checkpoint(path, device)
            return cls.from_model(ckpt.model, ckpt.config, device, batch_size, path, precision)
        if precision != EXPORT_PRECISION:
            raise SSNFError(f"{path} is an exported file: it computes in {EXPORT_PRECISION}, not {precision}")
        backend = open_file(path, kind, device, threads)
        meta = backend.metadata
        thresholds = {backend.precision: Threshold.from_dict(meta["threshold"])} if meta.get("threshold") else {}
        return cls(backend, from_dict(SSNFConfig, meta["config"]), thresholds, batch_size, path)

    @classmethod
    def build(cls, cfg: SSNFConfig, device: str | torch.device = "cpu", **kwargs) -> "Detector":
        """An untrained detector of ``cfg`` (its flows at their initialisation): for timing and tests."""
        return cls.from_model(SSNFModel.build(cfg.backbone, cfg.model, cfg.train.seed), cfg, device, **kwargs)

    @property
    def scoring(self) -> ScoringConfig:
        """The resolved scoring the backend computes."""
        return self.backend.scoring

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def model(self) -> SSNFModel | None:
        """The PyTorch model (None for an exported file: ``eager`` says why where one is needed)."""
        return self.backend.model

    @property
    def size(self) -> int:
        return self.cfg.data.image_size

    def eager(self, what: str) -> EagerBackend:
        """The PyTorch backend, for ``what`` needs it (calibrating, backbone features, exporting): a file ssnf
        exported cannot."""
        return self.backend.eager(what)

    @property
    def threshold(self) -> Threshold | None:
        """The thresholds of the arithmetic the backend runs in (``train.precision``; exported files: fp32)."""
        return self.thresholds.get(self.backend.precision)

    @threshold.setter
    def threshold(self, value: Threshold | None) -> None:
        if value is None:
            self.thresholds.pop(self.backend.precision, None)
        else:
            self.thresholds[value.precision] = value

    # -- images in ---------------------------------------------------------------------------------------

    def prepare(self, images: np.ndarray | Sequence) -> np.ndarray:
        """Paths or ``uint8`` images (RGB ``[H, W, 3]``, grey ``[H, W]`` / ``[H, W, 1]``, RGBA) of any size ->
        ``uint8 [N, S, S, 3]`` at the model's size, resized as the training images were."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise DataError(f"an array of images must be [N, H, W, C], got {tuple(images.shape)}: pass one image "
                                "as a list of one, or as [1, H, W, C]")
            if images.shape[1:] == (self.size, self.size, 3) and images.dtype == np.uint8:
                return images
        if len(images) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack([resize_image(as_rgb(image), self.size) for image in images])

    def predict(self, images: np.ndarray | Sequence) -> Prediction:
        """Scores, maps (and, with a threshold, verdicts and masks) of images: paths or arrays (see ``prepare``)."""
        images = self.prepare(images)
        batches = [self.backend(images[start:start + self.batch_size])
                   for start in range(0, len(images), self.batch_size)]
        prediction = self._joined(batches)
        prediction.stats = image_stats(images)
        return prediction

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend on one prepared batch (``uint8 [B, S, S, 3]``): ``(scores, maps)``; benchmarks time this."""
        return self.backend(batch)

    def predict_files(self, paths: Sequence[str | Path]) -> Prediction:
        """Scores and maps of image files (decoded as the training images were)."""
        return self.predict([Path(p) for p in paths])

    def predict_features(self, features: list[torch.Tensor]) -> Prediction:
        """Scores and maps from backbone features already extracted (per scale ``[N, C, h, w]``): PyTorch only."""
        eager = self.eager("predict_features")
        batches = [eager.score_features([f[start:start + self.batch_size] for f in features])
                   for start in range(0, len(features[0]), self.batch_size)]
        return self._joined(batches)

    def _joined(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> Prediction:
        if not batches:
            return Prediction(np.zeros(0, np.float32), np.zeros((0, self.size, self.size), np.float32), self.threshold)
        scores, maps = zip(*batches)
        return Prediction(np.concatenate(scores).astype(np.float32, copy=False),
                          np.concatenate(maps).astype(np.float32, copy=False), self.threshold)

    # -- thresholds --------------------------------------------------------------------------------------

    def calibrate(self, validation: ValidationSet, cfg: ThresholdConfig | None = None) -> Threshold:
        """Set the thresholds from a ``ValidationSet``: its clean normals (the nuisance normals are not the line as
        it was: they are measured apart) and, for ``threshold.method=f1``, its reference anomalies. Test images
        never come here."""
        if validation.images is None:
            raise SSNFError("this validation set keeps no images (a subset): build it with prepared.build_validation")
        labels = np.asarray(validation.labels)
        return self.calibrate_images(validation.images[validation.clean_normals], validation.images[labels == 1],
                                     cfg)

    def calibrate_images(self, normals: np.ndarray, anomalies: np.ndarray | None = None,
                         cfg: ThresholdConfig | None = None, **about) -> Threshold:
        """Set the thresholds from ``normals`` (images, as ``predict`` takes them) through this very path: their
        scores, maps and image statistics (the drift alarm's reference), and ``anomalies``' scores (``f1``). In the
        training precision and, when that is not fp32, in fp32 too (what deploys by default and what an exported
        file computes: bf16 and fp32 scores differ). ``about``: where the normals came from (``Threshold``'s
        ``source``, ``normals_from``, ``excluded``, ``channels``). Returns the threshold of this detector's
        precision; nothing is set unless every precision's threshold could be."""
        model = self.eager("calibrate").model
        cfg = cfg or self.cfg.threshold
        own, current = self.cfg.train.precision, model.precision
        fitted = {}
        try:
            for precision in dict.fromkeys((own, EXPORT_PRECISION)):
                model.set_precision(precision)
                normal = self.predict(normals)
                anomalous = self.predict(anomalies if anomalies is not None else [])
                fitted[precision] = fit_threshold(normal.scores, anomalous.scores, normal.maps, cfg, precision,
                                                  to_dict(self.scoring), normal.stats, **about)
        finally:
            model.set_precision(current)
        self.thresholds.update(fitted)
        return self.threshold

    def with_threshold(self, fpr: float | None = None, pixel_fpr: float | None = None,
                       method: str | None = None) -> "Detector":
        """This detector with its thresholds re-read at another rate or method (from the normals they rest on)."""
        if fpr is None and pixel_fpr is None and method is None:
            return self
        if self.threshold is None:
            raise SSNFError(f"{self.source or 'this model'} has no threshold to re-read: calibrate it first "
                            "(ssnf calibrate --checkpoint ...)")
        for precision, threshold in list(self.thresholds.items()):
            self.thresholds[precision] = threshold.at(fpr, pixel_fpr, method)
        return self

    # -- out ---------------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """What an exported file carries: the config, the resolved scoring, the thresholds of float32 scores
        (exported files compute in float32), the input contract."""
        threshold = self.thresholds.get(EXPORT_PRECISION)
        return {"format": EXPORT_FORMAT, "config": to_dict(self.cfg), "scoring": to_dict(self.scoring),
                "threshold": threshold.to_dict() if threshold is not None else None,
                "input": {"name": "images", "dtype": "uint8", "shape": ["batch", "height", "width", 3],
                          "colour": "RGB"},
                "outputs": {"scores": ["batch"], "maps": ["batch", self.size, self.size]}}


def as_rgb(image) -> np.ndarray:
    """A path or a ``uint8`` / ``uint16`` image (RGB, grey ``[H, W]`` or ``[H, W, 1]``, RGBA) -> ``uint8 [H, W, 3]``
    (16-bit levels scaled as ``ssnf.data.io.to_uint8`` scales 16-bit files)."""
    if isinstance(image, (str, Path)):
        return np.asarray(open_image(Path(image)))
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = to_uint8(image, sixteen_bit=True)
    if image.dtype == np.uint8:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim == 3 and image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"expected a uint8 or uint16 image [H, W, 3] (RGB), [H, W] (grey) or [H, W, 4] (RGBA), "
                    f"got {image.dtype} {tuple(image.shape)}")
