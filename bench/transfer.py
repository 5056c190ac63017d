"""Does what the self-supervised term learns transfer? Validation data only.

    .venv/bin/python bench/transfer.py --categories tire,magnetic_tile [--seeds 0,1,2,3]

For the trained quality runs of ``bench/detector.py`` (``gated``, ``w0``, ``default`` at each seed), the pixel
AUROC of the ``nll`` map on the held-out normal images of the validation split plus

- ``training recipe``: anomalies made by the *training* synthesis (the paper's patches, ``synthesis``
  defaults, each held-out image with a patch source among the other held-out images; fixed seed) — what
  the term was trained to push down, on images it never saw;
- ``reference``: validation's reference defects (``ssnf/synthesis/reference.py``), overall and per kind.

If the term beats w = 0 on the training recipe but not on the reference defects, the flow learnt the
synthesis and the lesson does not carry over to other defects. And where the synthesis leaves the NLL:
the median rise of NLL per dimension from each held-out image to its training-recipe copy, per stride, at
the positions the patches cover, at those whose backbone features changed without being covered (the
patch's surroundings, as the backbone sees them), and at those whose features did not change
(``ssnf.loss.unchanged_positions``, tolerance 0.05) — a rise there is the flow flagging the rest of an
image because part of it was pasted over. No test image is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ssnf.checkpoint import load_checkpoint
from ssnf.config import SSNFConfig
from ssnf.data.layouts import load_index
from ssnf.data.splits import make_splits
from ssnf.features import extract, load_images
from ssnf.loss import covered_positions, position_nll, unchanged_positions
from ssnf.metrics import pixel_auroc
from ssnf.synthesis.reference import reference_set
from ssnf.training import _synthetic_batch, candidate_maps

HERE = Path(__file__).resolve().parent
RECIPE_SEED = 12345


def recipe_set(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One training-recipe anomaly per held-out image, its source another held-out image (training's own
    batch synthesis, ``synthesis`` defaults)."""
    return _synthetic_batch(images, np.arange(len(images)), np.random.default_rng(seed), SSNFConfig())


def nll_pixel_auroc(model, cfg, normal_feats, normal_masks: np.ndarray, feats, masks: np.ndarray) -> float:
    """Pixel AUROC of the nll map over the held-out normals plus the anomalies with features ``feats``."""
    both = [torch.cat([n, f]) for n, f in zip(normal_feats, feats)]
    maps = candidate_maps(model, both, cfg, ["nll"], "cpu")["nll"].numpy()
    return pixel_auroc(np.concatenate([normal_masks, masks]), maps)


@torch.no_grad()
def nll_rise(model, normal_feats, recipe_feats, recipe_masks: np.ndarray) -> list[tuple[float, float, float]]:
    """Per scale: median rise of NLL per dimension (recipe copy minus original) at covered, changed but
    uncovered, and unchanged positions."""
    covered = covered_positions(torch.from_numpy(recipe_masks)[:, None], [f.shape[-2:] for f in recipe_feats])
    unchanged = unchanged_positions(normal_feats, recipe_feats, 0.05)
    out = []
    for nll_n, nll_s, cov, same in zip(position_nll(model.flow_features(normal_feats)),
                                       position_nll(model.flow_features(recipe_feats)), covered, unchanged):
        rise = nll_s - nll_n
        out.append(tuple(float(rise[where].median()) for where in (cov, ~cov & ~same, same)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--variants", default="gated,w0,default")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    print("| category | variant | seed | training recipe | reference, all | reference: per kind | NLL rise, median, "
          "per stride: covered / changed, uncovered / unchanged |")
    print("|---|---|---|---|---|---|---|")
    for category in args.categories.split(","):
        held = None
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in args.variants.split(","):
                name = f"{category}-{variant}" + (f"-seed{seed}" if seed else "")
                path = Path(args.results) / "checkpoints" / name / "checkpoint.pt"
                if not path.is_file():
                    print(f"| {category} | {variant} | {seed} | missing: {path} | | | |")
                    continue
                ckpt = load_checkpoint(path)
                model, cfg = ckpt.model.eval(), ckpt.config
                splits = make_splits(load_index(cfg.data), cfg.data)
                images = load_images(splits.val, cfg.data.image_size)
                if held is None or held[0] != (seed, len(images)):
                    recipe_images, recipe_masks = recipe_set(images, RECIPE_SEED)
                    reference = reference_set(images, cfg.train.seed)
                    held = ((seed, len(images)), recipe_images, recipe_masks, reference)
                _, recipe_images, recipe_masks, reference = held
                normal_feats = extract(model.extractor, images)
                normal_masks = np.zeros(images.shape[:3], bool)
                recipe_feats = extract(model.extractor, recipe_images)
                recipe = nll_pixel_auroc(model, cfg, normal_feats, normal_masks, recipe_feats, recipe_masks)
                ref_feats = extract(model.extractor, np.stack([r[0] for r in reference]))
                ref_masks = np.stack([r[1] for r in reference])
                kinds = np.array([r[2] for r in reference])
                overall = nll_pixel_auroc(model, cfg, normal_feats, normal_masks, ref_feats, ref_masks)
                per_kind = []
                for kind in sorted(set(kinds)):
                    sel = torch.from_numpy(kinds == kind)
                    value = nll_pixel_auroc(model, cfg, normal_feats, normal_masks, [f[sel] for f in ref_feats],
                                            ref_masks[sel.numpy()])
                    per_kind.append(f"{kind} {value:.3f} ({int(sel.sum())})")
                rises = "; ".join(f"{s}: " + " / ".join(f"{v:.3f}" for v in r)
                                  for s, r in zip(cfg.backbone.strides,
                                                  nll_rise(model, normal_feats, recipe_feats, recipe_masks)))
                print(f"| {category} | {variant} | {seed} | {recipe:.3f} | {overall:.3f} | {', '.join(per_kind)} | "
                      f"{rises} |", flush=True)


if __name__ == "__main__":
    main()
