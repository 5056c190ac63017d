"""Why PatchCore leads on tire: a nearest-neighbour score on the flows' own features, and the session shift.

    .venv/bin/python bench/nearest_neighbour.py --category tire [--coreset 0.1]

DIAGNOSIS ONLY. It reads test images, so nothing it prints may choose a default, an epoch or a
threshold. It answers two questions the issue's "find out why" leaves about PatchCore:

1. Are the features the gap? The same frozen mobilenetv2_100 at 256x256 and the same strides (8 + 16)
   the flows model, scored as PatchCore scores them: each position's feature averaged over its 3x3
   neighbourhood, stride 16 upsampled to the stride-8 grid and concatenated, a memory bank of the
   training normals' positions (a greedy k-centre coreset of ``--coreset`` of them, PatchCore's; 1 =
   the whole bank), the distance of each test position to its nearest bank entry as the map
   (bilinear to 256, Gaussian sigma 4) and the map's maximum as the image score. Image / pixel AUROC /
   AUPRO on the test split, as the flows report them.
2. Does the session shift move it as it moves the flows? The same groups and figures as
   ``bench/normal_shift.py``: the share of the test's good images above the held-out normals' 95th
   percentile, where the top 1 % of their map lies (off the object or on it), the image AUROC of the
   defects against the test's good images and against the held-out normals instead, and the test split's
   pixel AUROC / AUPRO with the map off the object set to its minimum.

The training normals, held-out normals and test split are ssnf's own (``make_splits`` with the default
seed), so the figures compare with ``bench/detector.py`` and ``bench/normal_shift.py`` run for run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssnf.backbones.extractor import build_extractor
from ssnf.config import SSNFConfig
from ssnf.data.dataset import load_pair
from ssnf.features import extract, load_images
from ssnf.metrics import compute_metrics
from ssnf.scoring import gaussian_blur
from ssnf.synthesis.patches import object_region
from ssnf.training import with_overrides

from normal_shift import Scored, groups_of, has_objects, off_object, pixel_figures, print_groups

HERE = Path(__file__).resolve().parent
SIGMA = 4.0  # PatchCore's (and anomalib's) smoothing of the upsampled map


def embed(extractor, images: np.ndarray) -> torch.Tensor:
    """PatchCore's locally aware patch features ``[N, C, h, w]`` on the finest stride's grid."""
    feats = extract(extractor, images)
    grid = feats[0].shape[-2:]
    pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in feats]
    return torch.cat([p if p.shape[-2:] == grid else F.interpolate(p, size=grid, mode="bilinear", align_corners=False)
                      for p in pooled], dim=1)


def greedy_coreset(bank: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """PatchCore's greedy k-centre subsample: each pick is the entry farthest from those picked so far."""
    n = len(bank)
    keep = max(1, int(round(fraction * n)))
    if keep >= n:
        return bank
    picked = torch.empty(keep, dtype=torch.long)
    picked[0] = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    nearest = torch.full((n,), float("inf"))
    squares = bank.pow(2).sum(dim=1)
    for i in range(1, keep):
        centre = bank[picked[i - 1]]
        d = squares - 2 * (bank @ centre) + centre.dot(centre)  # one matrix-vector product a pick
        torch.minimum(nearest, d, out=nearest)
        picked[i] = int(nearest.argmax())
    return bank[picked]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest bank row."""
    bank_sq = bank.pow(2).sum(dim=1)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d = q.pow(2).sum(dim=1, keepdim=True) - 2 * q @ bank.T + bank_sq
        out.append(d.min(dim=1).values.clamp_min_(0).sqrt_())
    return torch.cat(out)


def score_group(extractor, bank: torch.Tensor, samples, size: int, objects: bool, batch: int = 16) -> Scored:
    """The group's figures under the nearest-neighbour score: maps, image scores, masks and object regions."""
    maps, scores, masks, off, regions = [], [], [], [], []
    for start in range(0, len(samples), batch):
        pairs = [load_pair(s, size) for s in samples[start:start + batch]]
        images = np.stack([p[0] for p in pairs])
        emb = embed(extractor, images)
        n, c, h, w = emb.shape
        dist = nearest_distance(emb.permute(0, 2, 3, 1).reshape(-1, c), bank).view(n, h, w)
        up = gaussian_blur(F.interpolate(dist[:, None], size=(size, size), mode="bilinear",
                                         align_corners=False)[:, 0], SIGMA).numpy()
        maps.append(up)
        scores.append(dist.flatten(1).max(dim=1).values.numpy())
        masks.extend(p[1] for p in pairs)
        batch_regions = [object_region(image) if objects else None for image in images]
        regions.extend(batch_regions)
        off.extend(off_object(m, region) for m, region in zip(up, batch_regions))
    return Scored(np.concatenate(scores), np.array(off), np.concatenate(maps), np.stack(masks), regions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--category", default="tire")
    parser.add_argument("--coreset", type=float, default=0.1, help="share of the bank kept (1: all of it)")
    args = parser.parse_args()
    cfg = with_overrides(SSNFConfig(), data={"root": args.data_root, "category": args.category, "image_size": 256})
    size = cfg.data.image_size
    extractor = build_extractor(cfg.backbone)
    groups = groups_of(cfg)
    started = time.perf_counter()
    train_images = load_images(groups.pop("train normals"), size)
    objects = has_objects(train_images)
    train = embed(extractor, train_images)
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]).contiguous()
    full = len(bank)
    bank = greedy_coreset(bank, args.coreset)
    print(f"{args.category}: memory bank {len(bank)} of {full} positions ({args.coreset:.0%} coreset, "
          f"{bank.shape[1]} channels), built in {time.perf_counter() - started:.0f} s")
    scored = {name: score_group(extractor, bank, samples, size, objects) for name, samples in groups.items()}
    test = [g for n, g in scored.items() if n.startswith("test ")]
    labels = np.concatenate([np.full(len(g.scores), int(n != "test good")) for n, g in scored.items()
                             if n.startswith("test ")])
    metrics = compute_metrics(labels, np.concatenate([g.scores for g in test]), np.concatenate([g.masks for g in test]),
                              np.concatenate([g.maps for g in test]))
    print(f"TEST ({args.category}, nearest neighbour on mobilenetv2_100 strides 8+16, 256 px, max image score): "
          f"image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.3f}, "
          f"AUPRO {metrics['aupro']:.3f}; {time.perf_counter() - started:.0f} s in all")
    print_groups(scored)
    print("test split: " + pixel_figures(scored, objects))


if __name__ == "__main__":
    main()
