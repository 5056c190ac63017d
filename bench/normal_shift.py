"""Do the test split's normal images score like the normal images validation holds out?

    .venv/bin/python bench/normal_shift.py bench/results/checkpoints/tire-default/checkpoint.pt \
        bench/results/checkpoints/tire-w0/checkpoint.pt

DIAGNOSIS ONLY. It reads test images, so nothing it prints may choose a default, an epoch or a
threshold. It answers one question about tire's image AUROC: validation (held-out normal images
against reference-recipe defects) ranks the synthetic term ahead of w = 0 at every seed, the test
split ranks it behind. If the test's good images score higher than the held-out normals do, the
image AUROC depends on a shift validation cannot see, whatever the defects look like.

For each checkpoint, with the scoring it chose on validation: image-score quantiles of the training
normals (seen in training), the normals held out from train/good, the normals the dataset ships as
validation/good, the test's good images and each defect kind; the share of each group above the
held-out normals' 95th percentile; where the image score comes from (the median share of the top 1 %
of the image-score map that lies off the object, ``object_region``, in categories that show one); and
the image AUROC of each defect kind against the test's good images and against the held-out normals
instead; and the test split's pixel AUROC / AUPRO with the map off the object set to its minimum (how much
of the localisation error lies on the background).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.data.dataset import load_pair
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.features import load_images, to_tensor
from ssnf.config import ScoringConfig
from ssnf.metrics import aupro, image_auroc, pixel_auroc
from ssnf.scoring import image_map_kind, resolve, score
from ssnf.synthesis.patches import object_region, object_regions
from ssnf.training import prepare_data, validate


@torch.no_grad()
def image_scores_of(model, samples, scoring, size: int, objects: bool,
                    batch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image scores; the share of the top 1 % of each image-score map off the object (NaN: no object); the
    mean intensity (0-255) of each image's top 5 % of rows, background in tire's pictures; the image score
    taken over the object only (the mean of the top 1 % of its pixels; the image score where none)."""
    kind = image_map_kind(scoring)
    as_pixel = dataclasses.replace(scoring, map=kind, image_map="pixel")  # score() then returns the image's map
    scores, off, top_rows, on_object = [], [], [], []
    for start in range(0, len(samples), batch):
        images = np.stack([load_pair(s, size)[0] for s in samples[start:start + batch]])
        maps, batch_scores = score(model(to_tensor(images)), as_pixel, (size, size))
        scores.append(batch_scores.numpy())
        top_rows.extend(images[:, :max(1, size // 20)].reshape(len(images), -1).mean(axis=1, dtype=np.float64))
        for image, m, whole in zip(images, maps.numpy(), batch_scores.numpy()):
            region = object_region(image) if objects else None
            top = m >= np.quantile(m, 0.99)
            off.append(np.nan if region is None else float((top & ~region).sum() / top.sum()))
            inside = np.sort(m[region])[-max(1, int(0.01 * region.sum())):] if region is not None else None
            on_object.append(float(whole) if inside is None else float(inside.mean()))
    return np.concatenate(scores), np.array(off), np.array(top_rows), np.array(on_object)


def has_objects(samples, size: int) -> bool:
    """Whether the category shows objects on a background, decided once from its training normals as training
    and the reference set decide it (``object_regions``): a texture's per-image regions are spurious."""
    return any(r is not None for r in object_regions(load_images(samples, size)))


def pixel_figures(maps: np.ndarray, masks: np.ndarray, images: np.ndarray, objects: bool) -> str:
    """Pixel AUROC / AUPRO of test ``maps`` as they are, and with every pixel off the object (``object_region``)
    set to the maps' minimum: how much of the localisation error lies on the background (objects only)."""
    if not objects:
        return f"whole image: pixel AUROC {pixel_auroc(masks, maps):.3f}, AUPRO {aupro(masks, maps):.3f} (a texture)"
    on = maps.copy()
    for m, image in zip(on, images):
        region = object_region(image)
        if region is not None:
            m[~region] = maps.min()
    figures = []
    for what, m in (("whole image", maps), ("off the object set to the minimum", on)):
        figures.append(f"{what}: pixel AUROC {pixel_auroc(masks, m):.3f}, AUPRO {aupro(masks, m):.3f}")
    return "; ".join(figures)


@torch.no_grad()
def test_maps(model, samples, scoring, size: int, batch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chosen pixel maps of ``samples``, their masks and images."""
    maps, masks, images = [], [], []
    for start in range(0, len(samples), batch):
        pairs = [load_pair(s, size) for s in samples[start:start + batch]]
        batch_images = np.stack([p[0] for p in pairs])
        maps.append(score(model(to_tensor(batch_images)), scoring, (size, size))[0].numpy())
        masks.extend(p[1] for p in pairs)
        images.append(batch_images)
    return np.concatenate(maps), np.stack(masks), np.concatenate(images)


def scoring_of(path: str, ckpt) -> ScoringConfig:
    """The checkpoint's validated scoring; for checkpoints saved before it was kept, the quality run's JSON
    beside ``bench/results/checkpoints/<run>/``, else validation is run again (as ``detector.py rescore``)."""
    if ckpt.model.scoring is not None:
        return resolve(ckpt.config.scoring, ckpt.model.scoring)
    run = Path(path).resolve().parent
    record = run.parent.parent / f"quality-{run.name}.json"
    if record.is_file():
        return ScoringConfig(**json.loads(record.read_text())["scoring"])
    cfg = ckpt.config
    data = prepare_data(cfg, ckpt.model.extractor, make_splits(load_index(cfg.data), cfg.data))
    validate(ckpt.model, data.validation, cfg, "cpu")
    return resolve(cfg.scoring, ckpt.model.scoring)


def groups_of(cfg) -> dict[str, list]:
    splits = make_splits(load_index(cfg.data), cfg.data)
    held = [s for s in splits.val if "validation" not in s.image.parts]
    shipped = [s for s in splits.val if "validation" in s.image.parts]
    groups = {"train normals": splits.train, "held-out normals": held}
    if shipped:
        groups["shipped validation normals"] = shipped
    groups["test good"] = [s for s in splits.test if s.label == 0]
    for defect in sorted({s.defect for s in splits.test if s.label == 1}):
        groups[f"test {defect}"] = [s for s in splits.test if s.defect == defect]
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        cfg, model = ckpt.config, ckpt.model.eval()
        scoring = scoring_of(path, ckpt)
        groups = groups_of(cfg)
        objects = has_objects(groups["train normals"], cfg.data.image_size)
        both = {name: image_scores_of(model, samples, scoring, cfg.data.image_size, objects)
                for name, samples in groups.items()}
        scores = {name: b[0] for name, b in both.items()}
        held = scores["held-out normals"]
        bar = np.quantile(held, 0.95)
        print(f"\nDIAGNOSIS ON TEST ({cfg.data.category}, {path}; image score {scoring.image_score} of "
              f"{image_map_kind(scoring)}); defaults are not chosen from this.")
        print("| group | images | median | 5 % | 95 % | share above held-out 95 % | top 1 % off the object "
              "| image AUROC vs test good | vs held-out normals | top rows' intensity |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, s in scores.items():
            vs = ("", "")
            if name.startswith("test ") and name != "test good":
                vs = tuple(f"{image_auroc(np.r_[np.zeros(len(n)), np.ones(len(s))], np.r_[n, s]):.3f}"
                           for n in (scores["test good"], held))
            q5, q50, q95 = np.quantile(s, [0.05, 0.5, 0.95])
            off = both[name][1]
            where = f"{np.nanmedian(off):.0%}" if np.isfinite(off).any() else "no object"
            print(f"| {name} | {len(s)} | {q50:.3f} | {q5:.3f} | {q95:.3f} | {(s > bar).mean():.0%} | {where} "
                  f"| {vs[0]} | {vs[1]} | {both[name][2].mean():.2f} ± {both[name][2].std():.2f} |")
        for column, what in ((0, "image AUROC"), (3, "image AUROC of the top 1 % over the object only")):
            defects = np.concatenate([b[column] for n, b in both.items() if n.startswith("test ") and n != "test good"])
            for normals in ("test good", "held-out normals"):
                n = both[normals][column]
                auc = image_auroc(np.r_[np.zeros(len(n)), np.ones(len(defects))], np.r_[n, defects])
                print(f"all test defects against {normals}: {what} {auc:.3f}")
        test = make_splits(load_index(cfg.data), cfg.data).test
        print(f"test split, {scoring.map} map: {pixel_figures(*test_maps(model, test, scoring, cfg.data.image_size), objects)}")


if __name__ == "__main__":
    main()
