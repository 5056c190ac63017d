"""Validation: how well a model separates held-out normals from reference anomalies, and the scoring
chosen on it.

``validate`` computes every candidate anomaly map once from one flow pass over the validation features
(``ssnf.prepared.ValidationSet``), lets ``ssnf.scoring.choose`` pick the config's ``auto`` settings, keeps
the choice with the model (``model.scoring``) and reports ``val_image_auroc``, ``val_pixel_auroc`` and
their mean ``val_score``: the number a sweep ranks trials by. Test images never reach this module.
"""

from __future__ import annotations

import torch

from ssnf.config import MAP_KINDS, ScoringConfig
from ssnf.model.detector import SSNFModel
from ssnf.prepared import ValidationSet
from ssnf.scoring import anomaly_maps, candidates, choose, image_map_kind


@torch.no_grad()
def candidate_maps(model: SSNFModel, features: list[torch.Tensor], cfg: ScoringConfig, size: int, kinds: list[str],
                   device, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Anomaly maps ``[N, size, size]`` of every kind in ``kinds`` for precomputed features (one flow pass)."""
    model.eval()
    maps: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for start in range(0, len(features[0]), batch_size):
        outputs = model.flow_features([f[start:start + batch_size].to(device) for f in features])
        for kind in kinds:
            maps[kind].append(anomaly_maps(outputs, cfg, (size, size), kind).float().cpu())
    return {k: torch.cat(v) for k, v in maps.items()}


def validate(model: SSNFModel, val: ValidationSet, cfg: ScoringConfig, size: int, device) -> dict:
    """Validation metrics of ``model``; resolves ``cfg``'s ``auto`` scoring and keeps the choice in ``model.scoring``."""
    pixel_kinds, image_pairs = candidates(cfg)
    needed = set(pixel_kinds) | {kind for kind, _ in image_pairs}  # "pixel" follows the pixel kinds
    kinds = [k for k in MAP_KINDS if k in needed]
    chosen, metrics = choose(candidate_maps(model, val.features, cfg, size, kinds, device), val.labels, val.masks, cfg)
    model.scoring = chosen
    img, pix = metrics["val_image_auroc"], metrics["val_pixel_auroc"]
    return {"val_image_auroc": img, "val_pixel_auroc": pix, "val_score": 0.5 * (img + pix),
            "val_map": chosen.map, "val_image_map": image_map_kind(chosen), "val_image_score": chosen.image_score,
            "val_candidates": metrics["candidates"], "val_switch": metrics["switch"]}
