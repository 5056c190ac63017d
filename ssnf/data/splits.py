"""Train / validation / test splits with no test leakage.

Validation normals come only from the normal *training* images (a seeded hold-out) plus any
validation images the layout itself ships (MVTec 3D-AD). Test images never enter training or
validation. The hold-out is drawn before the few-shot choice, from its own random stream, so a
few-shot run validates on exactly the images a full run validates on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssnf.config import DataConfig
from ssnf.data.layouts import DatasetIndex, Sample
from ssnf.errors import DataError


@dataclass
class Splits:
    train: list[Sample]  # normal images the model fits
    val: list[Sample]  # normal images held out for validation
    test: list[Sample]  # reported, never used for choices


def holdout(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off ``round(fraction * n)`` samples, chosen by ``seed``; both parts keep their order."""
    n_out = int(round(len(samples) * fraction))
    picked = set(np.random.default_rng([seed, 0]).permutation(len(samples))[:n_out].tolist())
    kept = [s for i, s in enumerate(samples) if i not in picked]
    out = [s for i, s in enumerate(samples) if i in picked]
    return kept, out


def few_shot(samples: list[Sample], k: int, seed: int) -> list[Sample]:
    """Keep ``k`` of ``samples``, chosen by ``seed`` (order kept); ``k == 0`` keeps all."""
    if k == 0:
        return list(samples)
    if k > len(samples):
        raise DataError(f"few_shot={k} asks for more normal training images than the {len(samples)} available")
    picked = set(np.random.default_rng([seed, 1]).choice(len(samples), size=k, replace=False).tolist())
    return [s for i, s in enumerate(samples) if i in picked]


def make_splits(index: DatasetIndex, cfg: DataConfig) -> Splits:
    train, held = holdout(index.train, cfg.val_fraction, cfg.seed)
    train = few_shot(train, cfg.few_shot, cfg.seed)
    if not train:
        raise DataError(
            f"{index.root}: {len(index.train)} normal training images leave none to train on "
            f"after holding out val_fraction={cfg.val_fraction}"
        )
    val = held + list(index.validation)
    test_paths = {s.image.resolve() for s in index.test}
    leaked = [s.image for s in [*train, *val] if s.image.resolve() in test_paths]
    if leaked:
        raise DataError(f"{leaked[0]} is both a training/validation image and a test image: fix the dataset folders")
    return Splits(train, val, list(index.test))
