"""Robustness to a drifting line (issue 28): how detectors score good parts under nuisance change.

    python bench/robustness.py test --checkpoints runs/a/checkpoint.pt,runs/b/checkpoint.pt --out bench/results/x
    python bench/robustness.py validation --checkpoint runs/a/checkpoint.pt

``test`` (per checkpoint, a sweep trial's slim one too: validated again as in training, its thresholds set on its
validation normals; then its own category's test split at the model's size): the test metrics (image AUROC,
pixel AUROC, AUPRO), then the test split's *good* images under each transform of ``SHIFTS`` — a fixed,
documented set, different from validation's random draws (``ssnf.synthesis.nuisance``): its magnitudes lie at or
beyond validation's ranges — scored through ``Detector``: the false-positive rate at the model's own image
threshold (set on validation normals, requested 1 %), per transform and pooled, beside the rate on the unshifted
good images, and the image AUROC of the test defects (unshifted) against the shifted good images. Nothing here
chooses anything; the test split only reports.

``validation``: the model's validation set rebuilt with ``--nuisance`` (default: its config's, else ``full``):
per nuisance transform kind, how many nuisance normals lie over the validation threshold under each map kind.

Writes ``robustness.json`` (``test``) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The fixed shifts of the test good images: name -> Nuisance parameters (ssnf.synthesis.nuisance.apply)
SHIFTS = {
    "darker 10%": {"brightness": float(np.log(0.90))},
    "brighter 10%": {"brightness": float(np.log(1.10))},
    "contrast -12%": {"contrast": float(np.log(0.88))},
    "gamma 1.12": {"gamma": float(np.log(1.12))},
    "warmer": {"colour": 0.06},
    "defocus 1 px": {"blur": 1.0},
    "noise 2/255": {"noise": 2.0 / 255},
    "moved 2%, 2 deg": {"shift_x": 0.02, "shift_y": -0.015, "rotate": 2.0},
}


def shifted(images: np.ndarray, name: str) -> np.ndarray:
    from ssnf.synthesis.nuisance import Nuisance, apply

    return np.stack([apply(im, Nuisance(SHIFTS[name], seed=i)) for i, im in enumerate(images)])


def robustness_row(detector, test) -> dict:
    """Test metrics of ``detector`` on a decoded test split (``DecodedSplit`` at its size), the false-positive rate
    of its image threshold on the good images, plain and under each of ``SHIFTS``, and the defects' image AUROC
    against the shifted good images."""
    from ssnf.evaluate import evaluate
    from ssnf.metrics import image_auroc

    metrics = evaluate(detector.model, detector.cfg, test, detector.device).metrics
    labels = np.array([s.label for s in test.samples])
    good = test.images[labels == 0]
    plain = detector.predict(test.images)
    cut = detector.threshold.image
    row = {"category": detector.cfg.data.category, "seed": detector.cfg.train.seed,
           "scoring": [detector.scoring.map, detector.scoring.image_map, detector.scoring.image_score],
           "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
           "threshold": cut, "threshold_method": detector.threshold.method,
           "fpr_good": float((plain.scores[labels == 0] > cut).mean()), "shifts": {}}
    flagged, total = 0, 0
    defects = plain.scores[labels == 1]
    for name in SHIFTS:
        scores = detector.predict(shifted(good, name)).scores
        over = int((scores > cut).sum())
        flagged, total = flagged + over, total + len(scores)
        row["shifts"][name] = {
            "fpr": over / len(scores),
            "auroc_defects_vs_shifted_good": image_auroc(np.r_[np.zeros(len(scores)), np.ones(len(defects))],
                                                         np.r_[scores, defects])}
    row["fpr_shifted"] = flagged / total
    row["auroc_defects_vs_shifted_good"] = float(np.mean([s["auroc_defects_vs_shifted_good"]
                                                          for s in row["shifts"].values()]))
    return row


def evaluate_checkpoint(path, data_root: str = "", validation=None, scoring: dict | None = None) -> dict:
    """``robustness_row`` of the model in ``path`` (a checkpoint, a sweep trial's slim one too): validated again
    (its scoring chosen on validation as in training; ``validation``: another (reference, nuisance) recipe;
    ``scoring``: scoring keys to fix), its thresholds set on its validation normals, then the test split. Returns
    the row with the validation figures."""
    from ssnf.checkpoint import load_checkpoint
    from ssnf.config import SSNFConfig, from_dict, merge, to_dict
    from ssnf.data.dataset import decode_split
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.features import load_images
    from ssnf.inference import Detector
    from ssnf.prepared import build_validation
    from ssnf.synthesis.nuisance import measure_ranges
    from ssnf.synthesis.patches import object_regions
    from ssnf.validation import validate

    ckpt = load_checkpoint(path)
    model, cfg = ckpt.model, ckpt.config
    if data_root:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    if validation is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, reference=validation[0],
                                                                nuisance=validation[1]))
    cfg = from_dict(SSNFConfig, merge(to_dict(cfg), {f"scoring.{k}": v for k, v in (scoring or {}).items()}))
    splits = make_splits(load_index(cfg.data), cfg.data)
    size = cfg.data.image_size
    train_images = load_images(splits.train, size)
    ranges = measure_ranges(train_images, all(r is None for r in object_regions(train_images)))
    val = build_validation(model.extractor, load_images(splits.val, size), cfg.data.seed, "cpu", cfg.data.reference,
                           cfg.data.nuisance, ranges)
    report = validate(model, val, cfg.scoring, size, "cpu", cfg.threshold)
    detector = Detector.from_model(model, cfg)
    detector.calibrate(val)
    row = robustness_row(detector, decode_split(splits.test, size))
    row.update({k: report.get(k) for k in ("val_score", "val_score_clean", "val_nuisance_fpr")})
    return row


def run_test(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    results = []
    for path in args.checkpoints.split(","):
        row = evaluate_checkpoint(Path(path), args.data_root)
        row["checkpoint"] = path
        results.append(row)
        print(f"{row['category']} seed {row['seed']} {path}: test {row['image_auroc']:.3f} / "
              f"{row['pixel_auroc']:.3f} / {row['aupro']:.3f}; scoring {row['scoring']}; FPR at the 1 % threshold: "
              f"good {row['fpr_good']:.3f}, shifted good {row['fpr_shifted']:.3f} "
              f"({', '.join(k + ' %.2f' % v['fpr'] for k, v in row['shifts'].items())}); "
              f"AUROC defects vs shifted good {row['auroc_defects_vs_shifted_good']:.3f}", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "robustness.json").write_text(json.dumps({"shifts": SHIFTS, "results": results}, indent=1))


def run_validation(args: argparse.Namespace) -> None:
    import torch

    from ssnf.config import MAP_KINDS
    from ssnf.data.layouts import load_index
    from ssnf.data.splits import make_splits
    from ssnf.features import load_images
    from ssnf.inference import Detector
    from ssnf.prepared import build_validation
    from ssnf.scoring import image_scores
    from ssnf.synthesis.nuisance import measure_ranges
    from ssnf.synthesis.patches import object_regions
    from ssnf.threshold import image_threshold
    from ssnf.validation import candidate_maps

    torch.set_num_threads(args.threads)
    detector = Detector.load(args.checkpoint)
    model, cfg = detector.model, detector.cfg
    if args.data_root:
        cfg.data.root = args.data_root
    nuisance = args.nuisance or (cfg.data.nuisance if cfg.data.nuisance != "none" else "full")
    splits = make_splits(load_index(cfg.data), cfg.data)
    train_images = load_images(splits.train, cfg.data.image_size)
    ranges = measure_ranges(train_images, all(r is None for r in object_regions(train_images)))
    print("ranges:", {k: round(v, 4) for k, v in ranges.to_dict().items()})
    val = build_validation(model.extractor, load_images(splits.val, cfg.data.image_size), cfg.data.seed, "cpu",
                           cfg.data.reference, nuisance, ranges)
    kinds = [k for k in MAP_KINDS if model.bank is not None or k in ("density", "fastflow", "z2", "nll")]
    maps = candidate_maps(model, val.features, dataclasses.replace(cfg.scoring), cfg.data.image_size, kinds, "cpu",
                          normals=val.clean_normals)
    clean, shifted, anomalous = val.clean_normals, val.shifted, np.asarray(val.labels) == 1
    names = np.array(val.nuisance_kinds)
    groups = sorted({n.split("+")[0].replace("shift_x", "shift") for n in names})
    print(f"{int(clean.sum())} clean normals, {int(shifted.sum())} nuisance normals, {int(anomalous.sum())} anomalies")
    print("share of nuisance normals over the clean normals' 1 % threshold (image score: max of each map)")
    print(f"{'kind':10s} " + " ".join(f"{g[:9]:>9s}" for g in groups) + "   all  AUROC anomalies vs nuisance")
    for kind in kinds:
        s = image_scores(maps[kind], cfg.scoring, "max").numpy()
        cut, _ = image_threshold(s[clean], s[anomalous], cfg.threshold)
        per = [float((s[shifted][np.char.startswith(names, g.replace("shift", "shift_x"))] > cut).mean()) for g in groups]
        from ssnf.metrics import image_auroc

        auc = image_auroc(np.r_[np.zeros(int(shifted.sum())), np.ones(int(anomalous.sum()))],
                          np.r_[s[shifted], s[anomalous]])
        print(f"{kind:10s} " + " ".join(f"{p:9.2f}" for p in per) + f" {float((s[shifted] > cut).mean()):5.2f}  {auc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test")
    t.add_argument("--checkpoints", required=True, help="comma-separated checkpoints")
    t.add_argument("--data-root", default="")
    t.add_argument("--out", default="")
    t.add_argument("--threads", type=int, default=2)
    v = sub.add_parser("validation")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--data-root", default="")
    v.add_argument("--nuisance", default="")
    v.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run_test(args) if args.cmd == "test" else run_validation(args)


if __name__ == "__main__":
    main()
