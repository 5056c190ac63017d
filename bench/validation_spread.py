"""Can validation rank? Every trial of a sweep re-scored on each validation recipe (``data.reference`` x
``data.nuisance``).

    .venv/bin/python bench/validation_spread.py EXPERIMENT_FOLDER [--categories tire] [--out FILE.json]

For each trial of the experiment (a local sweep folder: ``<storage>/<name>``), its last checkpoint (the
model the sweep ranked: a trial stopped by ASHA at its rung, a full-budget one at the end) is validated on
the held-out normals with each recipe of ``RECIPES``: the ``standard`` recipe's anomalies, the ``graded``
recipe's, and the graded anomalies with nuisance normals (``photometric``, ``full``), through
``ssnf.validation.validate`` (the sweep's own scoring). Per category and recipe it prints the spread of
val_score and validation image AUROC across trials (std, inter-quartile range, range), the share of
trials at the ceiling (image AUROC >= 0.99, val_score >= 0.99), the share tied with the best (within
0.002), and, for ``graded``, validation image AUROC per grade (normals against each grade's anomalies); with
nuisance normals, the share of them over the clean normals' threshold; and the Spearman correlation of each
recipe's ranking of the trials with the others'. Test figures are never read here. The recipe is chosen from
these spreads, never from test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ssnf.backbones.extractor import build_extractor
from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig, from_dict, to_dict
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.features import load_images
from ssnf.prepared import ValidationSet, build_validation
from ssnf.results import read_results, row_config
from ssnf.scoring import resolve
from ssnf.synthesis.nuisance import measure_ranges
from ssnf.synthesis.patches import object_regions
from ssnf.synthesis.reference import GRADES
from ssnf.validation import validate

RECIPES = {"standard": ("standard", "none"), "graded": ("graded", "none"),
           "graded+photometric": ("graded", "photometric"), "graded+full": ("graded", "full")}
CEILING = 0.99
TIE = 0.002


def last_checkpoint(folder: Path, category: str, trial_id: str) -> Path | None:
    found = sorted((folder / category / f"trial_{trial_id}").glob("checkpoint_*/checkpoint.pt"))
    return found[-1] if found else None


def subset(val: ValidationSet, keep: np.ndarray) -> ValidationSet:
    anomalies = keep[val.labels == 1]
    return ValidationSet([f[torch.from_numpy(keep)] for f in val.features], val.labels[keep], val.masks[keep],
                         [k for k, m in zip(val.kinds, anomalies) if m], None,
                         None if val.nuisance is None else val.nuisance[keep])


def spread(values: list[float]) -> dict:
    v = np.array(values, float)
    return {"n": len(v), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "iqr": float(np.subtract(*np.percentile(v, [75, 25]))), "range": float(v.max() - v.min()),
            "at_ceiling": float((v >= CEILING).mean()), "tied_with_best": float((v >= v.max() - TIE).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="a local sweep folder (<storage>/<name>) with its trials' checkpoints")
    p.add_argument("--categories", default="")
    p.add_argument("--out", default="")
    args = p.parse_args()
    folder = Path(args.experiment).resolve()
    trials = read_results([str(folder)]).trials
    trials = trials[trials["status"].isin(["completed", "stopped"])]
    cats = [c for c in args.categories.split(",") if c] or sorted(set(trials["category"]))
    torch.set_num_threads(2)
    report: dict = {}
    for category in cats:
        rows = trials[trials["category"] == category]
        sets: dict = {}  # (extractor setting, recipe) -> (ValidationSet, extractor)
        scores: dict = {r: {"val_score": [], "val_image_auroc": [], "val_pixel_auroc": [], "val_nuisance_fpr": []}
                        for r in RECIPES}
        grades: dict = {g.name: [] for g in GRADES}
        per_trial = []
        t0 = time.perf_counter()
        for _, row in rows.iterrows():
            path = last_checkpoint(folder, category, row["trial_id"])
            if path is None:
                continue
            tree = row_config(row)
            entry = {"trial_id": row["trial_id"], "epochs": int(row["epochs_run"])}
            for recipe, (reference, nuisance) in RECIPES.items():
                cfg = from_dict(SSNFConfig, {**tree, "data": {**tree["data"], "reference": reference,
                                                              "nuisance": nuisance}})
                key = (repr(to_dict(cfg.backbone)), cfg.data.image_size, cfg.feature_precision, recipe)
                if key not in sets:
                    extractor = build_extractor(cfg.backbone)
                    extractor.precision = cfg.feature_precision
                    splits = make_splits(load_index(cfg.data), cfg.data)
                    train_images = load_images(splits.train, cfg.data.image_size)
                    ranges = measure_ranges(train_images, all(r is None for r in object_regions(train_images)))
                    images = load_images(splits.val, cfg.data.image_size)
                    sets[key] = (build_validation(extractor, images, cfg.data.seed, "cpu", reference, nuisance, ranges),
                                 extractor)
                val, extractor = sets[key]
                model = load_checkpoint(path, "cpu", extractor=extractor).model
                metrics = validate(model, val, cfg.scoring, cfg.data.image_size, "cpu", cfg.threshold)
                metrics.setdefault("val_nuisance_fpr", float("nan"))
                for m in scores[recipe]:
                    scores[recipe][m].append(metrics[m])
                entry[recipe] = metrics["val_score"]
                if recipe == "graded":
                    normal = val.labels == 0
                    for g in GRADES:
                        keep = normal | np.r_[np.zeros(int(normal.sum()), bool),
                                              np.array([k.endswith("/" + g.name) for k in val.kinds])]
                        # the scoring chosen on the whole set, applied to each grade's part
                        part = validate(model, subset(val, keep), resolve(cfg.scoring, model.scoring),
                                        cfg.data.image_size, "cpu")
                        grades[g.name].append(part["val_image_auroc"])
                        entry[f"graded_{g.name}_image_auroc"] = part["val_image_auroc"]
            per_trial.append(entry)
        if len(per_trial) < 2:
            print(f"{category}: fewer than two trials with checkpoints")
            continue
        from scipy.stats import spearmanr

        names = list(RECIPES)
        rhos = {f"{a} vs {b}": float(spearmanr([e[a] for e in per_trial], [e[b] for e in per_trial]).statistic)
                for i, a in enumerate(names) for b in names[i + 1:]}
        rho = spearmanr([e["standard"] for e in per_trial], [e["graded"] for e in per_trial])
        report[category] = {
            "trials": len(per_trial), "seconds": round(time.perf_counter() - t0, 1),
            "recipes": {r: {m: spread([x for x in v if np.isfinite(x)] or [float("nan")]) for m, v in scores[r].items()}
                        for r in RECIPES},
            "graded_image_auroc_by_grade": {g: spread(v) for g, v in grades.items()},
            "spearman_standard_vs_graded": {"rho": float(rho.statistic), "p": float(rho.pvalue)},
            "spearman": rhos,
            "per_trial": per_trial,
        }
        print(f"\n{category}: {len(per_trial)} trials (last checkpoints), {report[category]['seconds']} s")
        print(f"  {'recipe':<18} {'metric':<16} {'mean':>6} {'std':>6} {'IQR':>6} {'range':>6} {'>=0.99':>7} {'tied':>6}")
        for r in RECIPES:
            for m in ("val_score", "val_image_auroc", "val_pixel_auroc", "val_nuisance_fpr"):
                s = report[category]["recipes"][r][m]
                if s["n"] and np.isfinite(s["mean"]):
                    print(f"  {r:<18} {m:<16} {s['mean']:6.3f} {s['std']:6.3f} {s['iqr']:6.3f} {s['range']:6.3f} "
                          f"{s['at_ceiling']:7.0%} {s['tied_with_best']:6.0%}")
        for g, s in report[category]["graded_image_auroc_by_grade"].items():
            print(f"  graded {g:<9} image AUROC mean {s['mean']:.3f} std {s['std']:.3f} at ceiling {s['at_ceiling']:.0%}")
        for pair, value in rhos.items():
            print(f"  Spearman of val_score, {pair}: {value:+.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
