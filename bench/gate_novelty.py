"""Which share of a synthetic patch the novelty gate lets the push act on, per feature scale.

    .venv/bin/python bench/gate_novelty.py --categories tire,magnetic_tile [--batches 3]

Training data only (no test image is read): for a few training batches of the default config (16 normal
images, one synthetic image made from each, the paper's patch recipe), the share of the positions the
synthetic masks cover that ``ssnf.loss.novel_positions`` calls novel at each backbone stride.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ssnf.config import SSNFConfig
from ssnf.features import to_tensor
from ssnf.loss import covered_positions, novel_positions
from ssnf.training import _synthetic_batch, prepare, prepare_data, with_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--categories", default="tire,magnetic_tile")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    for category in args.categories.split(","):
        cfg = with_overrides(SSNFConfig(), data={"root": args.data_root, "category": category, "image_size": 256})
        splits, model = prepare(cfg)
        data = prepare_data(cfg, model.extractor, splits)
        rng = np.random.default_rng(0)
        for b in range(args.batches):
            idx = rng.choice(len(data.train_images), cfg.train.batch_size, replace=False)
            images, masks = _synthetic_batch(data.train_images, idx, rng, cfg)
            with torch.no_grad():
                synth = model.extractor(to_tensor(images, "cpu"))
            covered = covered_positions(torch.from_numpy(masks)[:, None], [f.shape[-2:] for f in synth])
            novel = novel_positions([f[idx] for f in data.train_features], synth, covered, cfg.loss.gate_quantile)
            shares = " ".join(f"stride {s}: {float(n[c].float().mean()):.3f} of {int(c.sum())} covered"
                              for s, n, c in zip(cfg.backbone.strides, novel, covered))
            print(f"{category} batch {b}: novel {shares}", flush=True)


if __name__ == "__main__":
    main()
