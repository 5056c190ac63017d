"""Rank map kinds and image scores of a trained checkpoint on its *validation* set (no test images).

    .venv/bin/python bench/validation_maps.py bench/results/checkpoints/tire-default/checkpoint.pt

What ssnf may legitimately use to choose ``scoring.map`` / ``scoring.image_score``: held-out normal
training images plus the reference-recipe anomalies, exactly as ``training.validate`` builds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ssnf.checkpoint import load_checkpoint
from ssnf.config import MAP_KINDS
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.training import prepare_data, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    cfg, model = ckpt.config, ckpt.model.eval()
    data = prepare_data(cfg, model.extractor, make_splits(load_index(cfg.data), cfg.data))
    print(f"VALIDATION ONLY ({cfg.data.category}, {args.checkpoint}, epoch {ckpt.epoch})")
    print("| map | image score | val image AUROC | val pixel AUROC | val_score |\n|---|---|---|---|---|")
    rows = []
    for kind in MAP_KINDS:
        for score in ("topk", "max"):
            scoring = dataclasses.replace(cfg.scoring, map=kind, image_map="pixel", image_score=score)
            v = validate(model, data.validation, dataclasses.replace(cfg, scoring=scoring), "cpu")
            rows.append({"map": kind, "image_score": score, **{k: x for k, x in v.items() if isinstance(x, float)}})
            print(f"| {kind} | {score} | {v['val_image_auroc']:.3f} | {v['val_pixel_auroc']:.3f} | {v['val_score']:.3f} |",
                  flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
