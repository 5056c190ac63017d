"""Scoring a trained detector on a split, and anomaly-map overlays for people to look at.

Test metrics are reported; nothing here feeds a choice of epoch, threshold or config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ssnf.backends import DEPLOY_PRECISION
from ssnf.config import ScoringConfig, SSNFConfig, to_dict
from ssnf.data.dataset import DecodedSplit, load_pair
from ssnf.data.layouts import ANOMALOUS, Sample
from ssnf.errors import DataError
from ssnf.metrics import compute_metrics, image_auroc
from ssnf.inference import Detector
from ssnf.model.detector import SSNFModel
from ssnf.threshold import Threshold, rates


@dataclass
class Evaluation:
    samples: list[Sample]
    labels: np.ndarray  # [N]
    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N, S, S] float32
    masks: np.ndarray  # [N, S, S] bool
    has_masks: bool
    metrics: dict
    scoring: ScoringConfig | None = None  # the resolved scoring the maps and scores come from
    threshold: Threshold | None = None  # the model's thresholds (set on validation normals), if it has them


@torch.no_grad()
def evaluate(model: SSNFModel, cfg: SSNFConfig, samples: Sequence[Sample] | DecodedSplit,
             device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = False,
             precision: str = DEPLOY_PRECISION) -> Evaluation:
    """Image and (where masks exist) pixel metrics of ``model`` on ``samples``, plus per-defect image AUROC, in
    ``precision`` (default: the arithmetic a loaded detector and its exported files compute in; the model's own
    precision is restored after).

    ``samples``: the split's files (read batch by batch), or the split already decoded at
    ``cfg.data.image_size`` (a sweep's trial on a node that has no copy of the dataset).
    Scoring: ``cfg.scoring`` with its ``auto`` settings taken from the model's validated choice."""
    decoded = samples if isinstance(samples, DecodedSplit) else None
    samples = list(decoded.samples if decoded is not None else samples)
    if not samples:
        raise DataError(f"no test images for {cfg.data.category}: nothing to evaluate")
    own = model.precision
    try:
        return _evaluate(Detector.from_model(model, cfg, device, batch_size, precision=precision), samples, decoded,
                         progress)
    finally:
        model.set_precision(own)


def _evaluate(detector: Detector, samples: list[Sample], decoded: DecodedSplit | None,
              progress: bool) -> Evaluation:
    cfg, batch_size = detector.cfg, detector.batch_size
    size = cfg.data.image_size
    scores, maps, masks = [], [], []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluate", disable=not progress, leave=False):
        if decoded is not None:
            images, batch_masks = decoded.images[start:start + batch_size], decoded.masks[start:start + batch_size]
        else:
            pairs = [load_pair(s, size) for s in samples[start:start + batch_size]]
            images, batch_masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        prediction = detector.predict(images)
        scores.append(prediction.scores)
        maps.append(prediction.maps)
        masks.append(batch_masks)
    labels = np.array([s.label for s in samples])
    result = Evaluation(samples, labels, np.concatenate(scores), np.concatenate(maps), np.concatenate(masks),
                        all(s.mask is not None for s in samples if s.label == ANOMALOUS), {})
    pixel = (result.masks, result.maps) if result.has_masks else (None, None)
    result.metrics = compute_metrics(labels, result.scores, *pixel)
    result.scoring = detector.scoring
    # how the threshold set on validation normals does here (reported only); not under another scoring
    # (ssnf evaluate --set scoring.*): it was set on the scores of the scoring chosen in training
    same = detector.threshold is not None and detector.threshold.scoring == to_dict(detector.scoring)
    result.threshold = detector.threshold if same else None
    if same:
        at = rates(result.scores, labels, detector.threshold.image)
        result.metrics["threshold_fpr"], result.metrics["threshold_fnr"] = at["fpr"], at["fnr"]
        if result.has_masks:
            pixel = rates(result.maps.ravel(), result.masks.ravel().astype(int), detector.threshold.pixel)
            result.metrics["pixel_threshold_fpr"], result.metrics["pixel_threshold_fnr"] = pixel["fpr"], pixel["fnr"]
    normal = labels == 0
    for defect in sorted({s.defect for s in samples if s.label == ANOMALOUS}):
        chosen = normal | np.array([s.defect == defect for s in samples])
        if normal.any():
            result.metrics[f"image_auroc/{defect}"] = image_auroc(labels[chosen], result.scores[chosen])
    return result


def overlay(image: np.ndarray, values: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``image`` with the map coloured (JET) over it on the fixed scale ``[lo, hi]``, the mask's outline in white:
    the one heatmap of ``ssnf evaluate``'s panels and ``ssnf predict``'s overlays."""
    heat = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blend = (0.55 * image + 0.45 * colour).astype(np.uint8)
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(blend, contours, -1, (255, 255, 255), max(1, min(image.shape[:2]) // 200))
    return blend


def write_overlays(evaluation: Evaluation, out_dir: Path, size: int, count: int = 8) -> list[Path]:
    """PNG panels (image | anomaly map over it | ground truth outline) for a few images.

    One image per defect kind (the highest-scoring), then the highest-scoring normal images, up to
    ``count``. Maps are coloured on one scale for the whole evaluation, so panels compare.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-evaluation.scores)
    picked: list[int] = []
    seen: set[str] = set()
    for i in order:
        s = evaluation.samples[i]
        if s.label == ANOMALOUS and s.defect not in seen:
            picked.append(int(i))
            seen.add(s.defect)
    picked = picked[: max(count - 2, 1)]
    picked += [int(i) for i in order if evaluation.samples[i].label == 0][: count - len(picked)]
    lo, hi = np.percentile(evaluation.maps, 1), np.percentile(evaluation.maps, 99.9)
    paths = []
    for rank, i in enumerate(picked[:count]):
        sample = evaluation.samples[i]
        image = load_pair(sample, size)[0]
        blend = overlay(image, evaluation.maps[i], np.zeros(evaluation.maps[i].shape, bool), lo, hi)
        truth = image.copy()
        contours, _ = cv2.findContours(evaluation.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(truth, contours, -1, (255, 0, 0), max(1, size // 128))
        panel = np.concatenate([image, blend, truth], axis=1)
        name = f"{rank:02d}_{sample.defect}_{sample.image.stem}_score{evaluation.scores[i]:.4g}.png"
        path = out_dir / name
        cv2.imwrite(str(path), panel[..., ::-1])
        paths.append(path)
    return paths
