"""What a training run needs from its data, computed once: ``prepare_data``.

The decoded training images, their frozen-backbone features (from the disk cache when the same images
went through the same backbone before), their object regions and the validation set: held-out normal
training images plus anomalies made from them by the fixed *reference recipe*
(``ssnf.synthesis.reference``), with their features. A sweep prepares this once per category and shares
it between its trials (``portable``: with the extractor and the decoded test split, so that a trial on
another node needs neither the dataset nor the weights cache). Test images are never used here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ssnf.backbones.extractor import FeatureExtractor
from ssnf.config import SSNFConfig, to_dict
from ssnf.data.dataset import DecodedSplit, decode_split
from ssnf.data.splits import Splits
from ssnf.errors import DataError
from ssnf.features import FeatureCache, extract, load_images
from ssnf.synthesis.patches import object_regions
from ssnf.synthesis.reference import reference_set


@dataclass
class ValidationSet:
    """Held-out normals and reference anomalies made from them, with their features."""

    features: list[torch.Tensor]
    labels: np.ndarray  # [N]
    masks: np.ndarray  # [N, S, S] bool
    kinds: list[str]
    images: np.ndarray | None = None  # uint8 [N, S, S, 3]: the thresholds are fitted through the whole inference path


@dataclass
class PreparedData:
    """Decoded training images, their backbone features and object regions, the validation set."""

    key: str  # data_key() of the config it was made for
    splits: Splits
    train_images: np.ndarray  # uint8 [N, S, S, 3]
    train_features: list[torch.Tensor]  # per scale [N, C, h, w], CPU
    validation: ValidationSet
    regions: list  # ``object_regions`` of the training images (all None: a texture), for ``foreground=object``
    timings: dict = field(default_factory=dict)
    extractor: torch.nn.Module | None = None  # the frozen backbone the features came from
    test: DecodedSplit | None = None  # the test split at the model's size (reported, never used to choose)


def check_splits(cfg: SSNFConfig, splits: Splits) -> None:
    """The splits a training run of ``cfg`` needs: validation images, and two training images to synthesize from."""
    if not splits.val:
        raise DataError(
            f"no validation images for {cfg.data.category}: set data.val_fraction > 0 "
            "(validation uses held-out normal training images, never test images)"
        )
    if cfg.loss.weight > 0 and len(splits.train) < 2:
        raise DataError(f"synthesis needs at least 2 normal training images, {cfg.data.category} has {len(splits.train)}")


def build_validation(extractor: FeatureExtractor, images: np.ndarray, seed: int, device,
                     recipe: str = "standard") -> ValidationSet:
    """The validation set of held-out normal ``images``: the images and their reference anomalies."""
    anomalies = reference_set(images, seed, recipe)
    all_images = np.concatenate([images, np.stack([a[0] for a in anomalies])])
    masks = np.concatenate([np.zeros(images.shape[:3], bool), np.stack([a[1] for a in anomalies])])
    labels = np.r_[np.zeros(len(images), int), np.ones(len(anomalies), int)]
    return ValidationSet(extract(extractor, all_images, device=device), labels, masks, [a[2] for a in anomalies],
                         all_images)


def data_key(cfg: SSNFConfig) -> str:
    """The config values prepared data depend on: data (its seed also draws the validation anomalies) and the
    backbone (and the precision it runs in). Not the training seed: runs that differ only in it (a sweep's
    confirmation seeds) share the data and are scored on the same validation set."""
    return json.dumps([to_dict(cfg.data), to_dict(cfg.backbone), cfg.train.precision], sort_keys=True)


def prepare_data(cfg: SSNFConfig, extractor: FeatureExtractor, splits: Splits, device="cpu",
                 portable: bool = False) -> PreparedData:
    """Decode the training images, extract (or load from the disk cache) their features, build validation.

    ``portable``: also carry the extractor and the decoded test split (what a sweep ships to its trials)."""
    t0 = time.perf_counter()
    extractor.precision = cfg.train.precision  # the features are those of the config's precision
    size = cfg.data.image_size
    images = load_images(splits.train, size)
    cache = FeatureCache()
    feats = cache.features(extractor, splits.train, images, size, device)
    t_features = time.perf_counter() - t0
    val = build_validation(extractor, load_images(splits.val, size), cfg.data.seed, device, cfg.data.reference)
    t = time.perf_counter()
    regions = object_regions(images)
    timings = {"features_s": t_features, "cache_hits": cache.hits, "cache_misses": cache.misses,
               "regions_s": time.perf_counter() - t}
    test = None
    if portable:
        extractor = extractor.cpu()
        test = decode_split(splits.test, size)
    timings["prepare_s"] = time.perf_counter() - t0
    return PreparedData(data_key(cfg), splits, images, [f.cpu() for f in feats], val, regions, timings,
                        extractor if portable else None, test)
