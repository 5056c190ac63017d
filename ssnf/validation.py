"""Validation: how well a model separates held-out normals from reference anomalies, and the scoring
chosen on it.

``validate`` computes every candidate anomaly map once from one pass over the validation features
(``ssnf.prepared.ValidationSet``: the flows, and the memory bank where the model has one; the fused maps'
standardisation is measured here, on the clean normals' pixels, and kept in the bank), lets
``ssnf.scoring.choose`` pick the config's ``auto`` settings, keeps the choice with the model (``model.scoring``)
and reports ``val_image_auroc``, ``val_pixel_auroc`` and their mean ``val_score``: the number a sweep ranks
trials by. With nuisance normals (``data.nuisance``) these count them as normals, and the report adds
``val_score_clean`` (the same scoring without them) and ``val_nuisance_fpr``: the share of nuisance normals
above the image threshold set on the clean normals (``threshold.fpr``). Test images never reach this module.
"""

from __future__ import annotations

import numpy as np
import torch

from ssnf.config import FUSED_WEIGHTS, MAP_KINDS, ScoringConfig, ThresholdConfig
from ssnf.devices import to_device
from ssnf.metrics import image_auroc, pixel_auroc
from ssnf.model.detector import SSNFModel
from ssnf.prepared import ValidationSet
from ssnf.scoring import (Sources, anomaly_maps, candidates, choose, fuse, fusion_stats, image_map_kind, image_scores,
                          needs)
from ssnf.threshold import image_threshold


@torch.no_grad()
def candidate_maps(model: SSNFModel, features: list[torch.Tensor], cfg: ScoringConfig, size: int, kinds: list[str],
                   device, batch_size: int = 32, normals: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Anomaly maps ``[N, size, size]`` of every kind in ``kinds`` for precomputed features (one pass). Fused
    kinds standardise the nll and knn maps over the pixels of ``normals`` (``[N]`` bool: the clean normals) and
    keep that standardisation in the model's bank."""
    model.eval()
    fused = [k for k in kinds if k in FUSED_WEIGHTS]
    base = list(dict.fromkeys([k for k in kinds if k not in FUSED_WEIGHTS] + (["nll", "knn"] if fused else [])))
    flows, bank = needs(base)
    maps: dict[str, list[torch.Tensor]] = {k: [] for k in base}
    for start in range(0, len(features[0]), batch_size):
        feats = [to_device(f[start:start + batch_size], device) for f in features]
        sources = Sources(model.flow_features(feats) if flows else None, model.bank(feats) if bank else None)
        for kind in base:
            maps[kind].append(anomaly_maps(sources, cfg, (size, size), kind).float().cpu())
    out = {k: torch.cat(v) for k, v in maps.items()}
    if fused:
        keep = torch.from_numpy(np.asarray(normals, bool)) if normals is not None else slice(None)
        stats = fusion_stats(out["nll"][keep], out["knn"][keep])
        model.bank.fusion.copy_(stats)
        for kind in fused:
            out[kind] = fuse(out["nll"], out["knn"], stats, FUSED_WEIGHTS[kind])
    return {k: out[k] for k in kinds}


def validate(model: SSNFModel, val: ValidationSet, cfg: ScoringConfig, size: int, device,
             threshold: ThresholdConfig | None = None) -> dict:
    """Validation metrics of ``model``; resolves ``cfg``'s ``auto`` settings and keeps the choice in
    ``model.scoring``. ``threshold``: the image threshold the nuisance normals' false-positive rate is read at."""
    bank = model.bank is not None
    pixel_kinds, image_pairs = candidates(cfg, bank)
    wanted = set(pixel_kinds) | {kind for kind, _ in image_pairs}  # "pixel" follows the pixel kinds
    kinds = [k for k in MAP_KINDS if k in wanted]
    clean = val.clean_normals
    maps = candidate_maps(model, val.features, cfg, size, kinds, device, normals=clean)
    labels = np.asarray(val.labels)
    chosen, metrics = choose(maps, labels, val.masks, cfg, bank)
    model.scoring = chosen
    img, pix = metrics["val_image_auroc"], metrics["val_pixel_auroc"]
    report = {"val_image_auroc": img, "val_pixel_auroc": pix, "val_score": 0.5 * (img + pix),
              "val_map": chosen.map, "val_image_map": image_map_kind(chosen), "val_image_score": chosen.image_score,
              "val_candidates": metrics["candidates"], "val_switch": metrics["switch"]}
    shifted = val.shifted
    if shifted.any():
        scores = image_scores(maps[image_map_kind(chosen)], chosen).numpy()
        keep = ~shifted
        clean_img = image_auroc(labels[keep], scores[keep])
        clean_pix = pixel_auroc(val.masks[keep], maps[chosen.map][torch.from_numpy(keep)].numpy())
        anomalous = labels == 1
        # the threshold needs 2 clean normals (a sweep trial may have fewer: no rate then)
        cut = (image_threshold(scores[clean], scores[anomalous], threshold or ThresholdConfig())[0]
               if clean.sum() >= 2 else float("nan"))
        versus = np.r_[np.zeros(int(shifted.sum())), np.ones(int(anomalous.sum()))]
        report.update(val_image_auroc_clean=clean_img, val_pixel_auroc_clean=clean_pix,
                      val_score_clean=0.5 * (clean_img + clean_pix),
                      val_nuisance_fpr=float((scores[shifted] > cut).mean()) if cut == cut else float("nan"),
                      val_nuisance_image_auroc=image_auroc(versus, np.r_[scores[shifted], scores[anomalous]]))
    return report
