"""Why a trained detector falls short: re-score its test predictions under alternative aggregations.

    .venv/bin/python bench/diagnose.py bench/results/checkpoints/tire-default/checkpoint.pt

DIAGNOSIS ONLY. It reads test images, so nothing it prints may choose a default, an epoch or a
threshold; ssnf's defaults come from validation (bench/design_validation.py). It answers the issue's
"find out why": is it the map kind, one scale or the other, the positions at the feature-map border
(zero padding), or the false positives on normal images?
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch
import torch.nn.functional as F

from ssnf.checkpoint import load_checkpoint
from ssnf.data.dataset import load_pair
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.features import to_tensor
from ssnf.metrics import compute_metrics
from ssnf.scoring import gaussian_blur, image_scores, position_maps


@torch.no_grad()
def per_scale_maps(model, samples, size, kind, batch=16):
    """``[scales][N, S, S]`` unsmoothed maps, and the masks ``[N, S, S]``."""
    maps, masks = None, []
    for start in range(0, len(samples), batch):
        pairs = [load_pair(s, size) for s in samples[start:start + batch]]
        outputs = model(to_tensor(np.stack([p[0] for p in pairs])))
        scaled = [F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
                  for m in position_maps(outputs, kind)]
        maps = [[] for _ in scaled] if maps is None else maps
        for acc, m in zip(maps, scaled):
            acc.append(m)
        masks.append(np.stack([p[1] for p in pairs]))
    return [torch.cat(m) for m in maps], np.concatenate(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.config
    samples = make_splits(load_index(cfg.data), cfg.data).test
    labels = np.array([s.label for s in samples])
    size = cfg.data.image_size
    rows = []
    for kind in ("density", "fastflow", "z2", "nll"):
        scales, masks = per_scale_maps(ckpt.model.eval(), samples, size, kind)
        choices = {"all scales": torch.stack(scales).mean(0)}
        for stride, m in zip(cfg.backbone.strides, scales):
            choices[f"stride {stride} only"] = m
        b = max(cfg.backbone.strides)  # one feature cell of the coarsest scale
        for name, maps in choices.items():
            smooth = gaussian_blur(maps, cfg.scoring.smooth_sigma) if cfg.scoring.smooth_sigma > 0 else maps
            for image_score in ("topk", "max"):
                scoring = dataclasses.replace(cfg.scoring, image_score=image_score)
                scores = image_scores(smooth, scoring).numpy()
                m = compute_metrics(labels, scores, masks, smooth.numpy())
                rows.append({"map": kind, "scales": name, "image_score": image_score, **m})
            if name == "all scales":  # the same maps cropped by one coarse feature cell on every side
                inner = smooth[:, b:-b, b:-b]
                scoring = dataclasses.replace(cfg.scoring, image_score="topk")
                m = compute_metrics(labels, image_scores(inner, scoring).numpy(), masks[:, b:-b, b:-b], inner.numpy())
                rows.append({"map": kind, "scales": "all, border cropped", "image_score": "topk", **m})
    print(f"DIAGNOSIS ON TEST ({cfg.data.category}, {args.checkpoint}); defaults are not chosen from this.")
    print("| map | scales | image score | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['map']} | {r['scales']} | {r['image_score']} | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
