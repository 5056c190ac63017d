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
held-out normals' 95th percentile; and the image AUROC of each defect kind against the test's good
images and against the held-out normals instead.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.data.dataset import load_pair
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.features import to_tensor
from ssnf.metrics import image_auroc
from ssnf.scoring import image_map_kind, resolve, score


@torch.no_grad()
def image_scores_of(model, samples, scoring, size: int, batch: int = 16) -> np.ndarray:
    out = []
    for start in range(0, len(samples), batch):
        images = np.stack([load_pair(s, size)[0] for s in samples[start:start + batch]])
        out.append(score(model(to_tensor(images)), scoring, (size, size))[1].numpy())
    return np.concatenate(out)


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
        scoring = resolve(cfg.scoring, model.scoring)
        scores = {name: image_scores_of(model, samples, scoring, cfg.data.image_size)
                  for name, samples in groups_of(cfg).items()}
        held = scores["held-out normals"]
        bar = np.quantile(held, 0.95)
        print(f"\nDIAGNOSIS ON TEST ({cfg.data.category}, {path}; image score {scoring.image_score} of "
              f"{image_map_kind(scoring)}); defaults are not chosen from this.")
        print("| group | images | median | 5 % | 95 % | share above held-out 95 % "
              "| image AUROC vs test good | vs held-out normals |")
        print("|---|---|---|---|---|---|---|---|")
        for name, s in scores.items():
            vs = ("", "")
            if name.startswith("test ") and name != "test good":
                vs = tuple(f"{image_auroc(np.r_[np.zeros(len(n)), np.ones(len(s))], np.r_[n, s]):.3f}"
                           for n in (scores["test good"], held))
            q5, q50, q95 = np.quantile(s, [0.05, 0.5, 0.95])
            print(f"| {name} | {len(s)} | {q50:.3f} | {q5:.3f} | {q95:.3f} | {(s > bar).mean():.0%} | {vs[0]} | {vs[1]} |")
        defects = np.concatenate([s for n, s in scores.items() if n.startswith("test ") and n != "test good"])
        for normals in ("test good", "held-out normals"):
            n = scores[normals]
            auc = image_auroc(np.r_[np.zeros(len(n)), np.ones(len(defects))], np.r_[n, defects])
            print(f"all test defects against {normals}: image AUROC {auc:.3f}")


if __name__ == "__main__":
    main()
