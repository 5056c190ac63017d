"""The design experiment behind ssnf's loss and scoring defaults, on *validation* only.

    .venv/bin/python bench/design_validation.py loss    --category tire [--epochs 6] [--variants default,w0] [--noise 0,0.1]
    .venv/bin/python bench/design_validation.py scoring --category tire [--epochs 6]

A cheap flow (4 couplings, hidden 64; everything else default) is trained per loss variant and scored
on the validation set (held-out normal training images + reference-recipe anomalies). No test image is
read. ``scoring`` trains w = 0 and the mask form, then scores the same models with every map kind,
smoothing and image score. Prints one line per epoch / per scoring choice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssnf.config import SSNFConfig
from ssnf.features import load_images
from ssnf.training import build_validation, train, validate, with_overrides

LOSS_VARIANTS = {
    "default": {},  # today's default loss (mask w 0.2, novelty gate, anchor)
    "w0": {"weight": 0.0},
    "constrained_w1_nocap": {"weight": 1.0, "form": "constrained", "cap": 0.0},
    "constrained_w1_cap1": {"weight": 1.0, "form": "constrained", "cap": 1.0},
    "constrained_w0.1_cap1": {"weight": 0.1, "form": "constrained", "cap": 1.0},
    "hinge_w1_m0.5": {"weight": 1.0, "form": "hinge", "margin": 0.5},
    "mask_w1_m1": {"weight": 1.0, "form": "mask", "margin": 1.0},
    "mask_w1_m3": {"weight": 1.0, "form": "mask", "margin": 3.0},
    "mask_w0.2_m1": {"weight": 0.2, "form": "mask", "margin": 1.0},
    "mask_w0.2_m1_novel0.99": {"weight": 0.2, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.99},
    "mask_w0.2_m1_novel0.9": {"weight": 0.2, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.9},
    "mask_w1_m1_novel0.9": {"weight": 1.0, "form": "mask", "margin": 1.0, "gate": "novel", "gate_quantile": 0.9},
}
MODEL_VARIANTS = {"plain": {}, "position": {"position": True}}
KEEP = ("epoch", "loss", "normal", "synthetic", "active", "novel", "val_image_auroc", "val_pixel_auroc", "val_score",
        "train_s", "gate_s")


def cheap(data_root: str, category: str, epochs: int, loss: dict, model: dict | None = None,
          noise: float = 0.0) -> SSNFConfig:
    return with_overrides(SSNFConfig(), data={"root": data_root, "category": category}, loss=loss,
                          model={"couplings": 4, "hidden": 64, **(model or {})},
                          train={"epochs": epochs, "feature_noise": noise})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["loss", "scoring"])
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--category", default="tire")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", default="")
    parser.add_argument("--models", default="plain", help="comma-separated: plain, position")
    parser.add_argument("--noise", default="0", help="comma-separated train.feature_noise values")
    args = parser.parse_args()
    names = args.variants.split(",") if args.variants else (
        list(LOSS_VARIANTS) if args.what == "loss" else ["w0", "mask_w0.2_m1"])
    noises = [float(v) for v in args.noise.split(",")]
    runs = [(n, m, s) for s in noises for m in args.models.split(",") for n in names]
    for loss_name, model_name, noise in runs:
        name = f"{loss_name}/{model_name}" + (f"/noise{noise:g}" if noise else "")
        cfg = cheap(args.data_root, args.category, args.epochs, LOSS_VARIANTS[loss_name], MODEL_VARIANTS[model_name],
                    noise)
        result = train(cfg, progress=False, callback=lambda r, _, n=name: print(
            n, json.dumps({k: round(r[k], 4) for k in KEEP if k in r}), flush=True))
        if args.what != "scoring":
            continue
        size = cfg.data.image_size
        val = build_validation(result.model.extractor, result.splits, load_images(result.splits.val, size),
                               cfg.train.seed, "cpu")
        for kind in ("density", "fastflow", "z2", "nll"):
            for sigma in (0.0, 4.0):
                for image_score in ("max", "topk"):
                    scored = with_overrides(cfg, scoring={"map": kind, "image_map": "pixel", "smooth_sigma": sigma,
                                                                "image_score": image_score})
                    m = validate(result.model, val, scored, "cpu")
                    print(name, "scoring", kind, sigma, image_score,
                          " ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)), flush=True)


if __name__ == "__main__":
    main()
