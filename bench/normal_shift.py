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
from operator import attrgetter
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


@dataclasses.dataclass
class Scored:
    """One group of images under one detector: image scores, the share of the top 1 % of each image-score map
    off the object (NaN: no object), and for the test groups the pixel maps, masks and object regions."""

    scores: np.ndarray
    off: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    regions: list | None = None
    top_rows: np.ndarray | None = None  # mean intensity of each image's top 5 % of rows (tire's background)
    on_object: np.ndarray | None = None  # the image score taken over the object only


def off_object(m: np.ndarray, region: np.ndarray | None) -> float:
    """The share of the top 1 % of map ``m`` that lies off ``region`` (NaN: no object)."""
    if region is None:
        return np.nan
    top = m >= np.quantile(m, 0.99)
    return float((top & ~region).sum() / top.sum())


@torch.no_grad()
def image_scores_of(model, samples, scoring, size: int, objects: bool, pixel: bool, batch: int = 16) -> Scored:
    """The group's figures under a flow model (``pixel``: keep its chosen pixel maps, masks and regions); the
    image score over the object only is the mean of the top 1 % of its pixels (the image score where none)."""
    kind = image_map_kind(scoring)
    as_pixel = dataclasses.replace(scoring, map=kind, image_map="pixel")  # score() then returns the image's map
    scores, off, top_rows, on_object, maps, masks, regions = [], [], [], [], [], [], []
    for start in range(0, len(samples), batch):
        pairs = [load_pair(s, size) for s in samples[start:start + batch]]
        images = np.stack([p[0] for p in pairs])
        outputs = model(to_tensor(images))
        image_maps, batch_scores = score(outputs, as_pixel, (size, size))
        scores.append(batch_scores.numpy())
        top_rows.extend(images[:, :max(1, size // 20)].reshape(len(images), -1).mean(axis=1, dtype=np.float64))
        batch_regions = [object_region(image) if objects else None for image in images]
        for region, m, whole in zip(batch_regions, image_maps.numpy(), batch_scores.numpy()):
            off.append(off_object(m, region))
            inside = np.sort(m[region])[-max(1, int(0.01 * region.sum())):] if region is not None else None
            on_object.append(float(whole) if inside is None else float(inside.mean()))
        if pixel:
            maps.append(score(outputs, scoring, (size, size))[0].numpy())
            masks.extend(p[1] for p in pairs)
            regions.extend(batch_regions)
    return Scored(np.concatenate(scores), np.array(off), np.concatenate(maps) if pixel else None,
                  np.stack(masks) if pixel else None, regions if pixel else None, np.array(top_rows),
                  np.array(on_object))


def has_objects(images: np.ndarray) -> bool:
    """Whether the category shows objects on a background, decided once from its training normals as training
    and the reference set decide it (``object_regions``): a texture's per-image regions are spurious."""
    return any(r is not None for r in object_regions(images))


def separation(normals: np.ndarray, defects: np.ndarray) -> float:
    """Image AUROC of ``defects`` against ``normals``."""
    return image_auroc(np.r_[np.zeros(len(normals)), np.ones(len(defects))], np.r_[normals, defects])


def print_groups(scored: dict[str, Scored], extra: str = "", cells: dict[str, str] | None = None) -> None:
    """The table of every group (``extra``: one more column, its ``cells`` by group), then every test
    defect against the test's good images and against the held-out normals."""
    held = scored["held-out normals"].scores
    bar = np.quantile(held, 0.95)
    defective = [n for n in scored if n.startswith("test ") and n != "test good"]
    print("| group | images | median | 5 % | 95 % | share above held-out 95 % | top 1 % off the object "
          "| image AUROC vs test good | vs held-out normals |" + (f" {extra} |" if extra else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for name, group in scored.items():
        s = group.scores
        vs = [f"{separation(n, s):.3f}" for n in (scored["test good"].scores, held)] if name in defective else ["", ""]
        q5, q50, q95 = np.quantile(s, [0.05, 0.5, 0.95])
        where = f"{np.nanmedian(group.off):.0%}" if np.isfinite(group.off).any() else "no object"
        print(f"| {name} | {len(s)} | {q50:.3f} | {q5:.3f} | {q95:.3f} | {(s > bar).mean():.0%} | {where} "
              f"| {vs[0]} | {vs[1]} |" + (f" {cells[name]} |" if extra else ""))
    print_against(scored, "image AUROC", attrgetter("scores"))


def print_against(scored: dict[str, Scored], what: str, column) -> None:
    defects = np.concatenate([column(g) for n, g in scored.items() if n.startswith("test ") and n != "test good"])
    for normals in ("test good", "held-out normals"):
        print(f"all test defects against {normals}: {what} {separation(column(scored[normals]), defects):.3f}")


def pixel_figures(scored: dict[str, Scored], objects: bool) -> str:
    """Pixel AUROC / AUPRO of the test groups' maps as they are, and with every pixel off the object set to
    the maps' minimum: how much of the localisation error lies on the background (objects only)."""
    test = [g for n, g in scored.items() if n.startswith("test ")]
    maps, masks = np.concatenate([g.maps for g in test]), np.concatenate([g.masks for g in test])
    if not objects:
        return f"whole image: pixel AUROC {pixel_auroc(masks, maps):.3f}, AUPRO {aupro(masks, maps):.3f} (a texture)"
    on = maps.copy()
    for m, region in zip(on, (r for g in test for r in g.regions)):
        if region is not None:
            m[~region] = maps.min()
    figures = []
    for what, m in (("whole image", maps), ("off the object set to the minimum", on)):
        figures.append(f"{what}: pixel AUROC {pixel_auroc(masks, m):.3f}, AUPRO {aupro(masks, m):.3f}")
    return "; ".join(figures)


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
        objects = has_objects(load_images(groups["train normals"], cfg.data.image_size))
        scored = {name: image_scores_of(model, samples, scoring, cfg.data.image_size, objects,
                                        pixel=name.startswith("test "))
                  for name, samples in groups.items()}
        print(f"\nDIAGNOSIS ON TEST ({cfg.data.category}, {path}; image score {scoring.image_score} of "
              f"{image_map_kind(scoring)}); defaults are not chosen from this.")
        print_groups(scored, "top rows' intensity",
                     {n: f"{g.top_rows.mean():.2f} ± {g.top_rows.std():.2f}" for n, g in scored.items()})
        print_against(scored, "image AUROC of the top 1 % over the object only", attrgetter("on_object"))
        print(f"test split, {scoring.map} map: {pixel_figures(scored, objects)}")


if __name__ == "__main__":
    main()
