"""What a training run needs from its data, computed once: ``prepare_data``.

The decoded training images, their frozen-backbone features (from the disk cache when the same images
went through the same backbone before), their object regions, the category's nuisance magnitudes
(``ssnf.synthesis.nuisance.measure_ranges``) and the validation set: held-out normal training images,
anomalies made from them by the fixed *reference recipe* (``ssnf.synthesis.reference``) and, with
``data.nuisance``, the same normals under nuisance transforms (scored as normals), with their features.
A memory bank (``bank.enabled``) is built from the prepared training features (``ssnf.model.bank``), keyed by
``bank_key``. A sweep prepares this once per category and shares
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
from ssnf.synthesis.nuisance import NuisanceRanges, measure_ranges, nuisance_set
from ssnf.synthesis.patches import object_regions
from ssnf.synthesis.reference import reference_set


@dataclass
class ValidationSet:
    """Held-out normals, reference anomalies made from them and (``data.nuisance``) the normals under nuisance
    transforms, with their features. Order: the clean normals, the anomalies, the nuisance normals."""

    features: list[torch.Tensor]
    labels: np.ndarray  # [N] 1: a reference anomaly
    masks: np.ndarray  # [N, S, S] bool
    kinds: list[str]  # the reference anomalies' kinds, in their order
    images: np.ndarray | None = None  # uint8 [N, S, S, 3]: the thresholds are fitted through the whole inference path
    nuisance: np.ndarray | None = None  # [N] bool: a nuisance normal (None: there are none)
    nuisance_kinds: list[str] = field(default_factory=list)  # the nuisance normals' transforms, in their order

    @property
    def shifted(self) -> np.ndarray:
        """``[N]`` bool: the nuisance normals."""
        return np.zeros(len(self.labels), bool) if self.nuisance is None else np.asarray(self.nuisance, bool)

    @property
    def clean_normals(self) -> np.ndarray:
        """``[N]`` bool: the held-out normals as they are (what thresholds are set on)."""
        return (np.asarray(self.labels) == 0) & ~self.shifted


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
    ranges: NuisanceRanges = field(default_factory=NuisanceRanges)  # the category's nuisance magnitudes


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
                     recipe: str = "standard", nuisance: str = "none",
                     ranges: NuisanceRanges | None = None) -> ValidationSet:
    """The validation set of held-out normal ``images``: the images, their reference anomalies and (``nuisance``
    other than ``none``) the images under nuisance transforms of the category's ``ranges``."""
    anomalies = reference_set(images, seed, recipe)
    shifted = nuisance_set(images, seed, nuisance, ranges or NuisanceRanges()) if nuisance != "none" else []
    parts = [images, np.stack([a[0] for a in anomalies])] + ([np.stack([s[0] for s in shifted])] if shifted else [])
    all_images = np.concatenate(parts)
    normal_masks = np.zeros(images.shape[:3], bool)
    masks = np.concatenate([normal_masks, np.stack([a[1] for a in anomalies])]
                           + ([np.zeros((len(shifted), *images.shape[1:3]), bool)] if shifted else []))
    labels = np.r_[np.zeros(len(images), int), np.ones(len(anomalies), int), np.zeros(len(shifted), int)]
    flags = np.r_[np.zeros(len(images) + len(anomalies), bool), np.ones(len(shifted), bool)]
    return ValidationSet(extract(extractor, all_images, device=device), labels, masks, [a[2] for a in anomalies],
                         all_images, flags if shifted else None, [s[1] for s in shifted])


def data_key(cfg: SSNFConfig) -> str:
    """The config values prepared data depend on: data (its seed also draws the validation anomalies) and the
    backbone (and the precision it runs in: ``feature_precision``). Not the training seed: runs that differ only in it
    (a sweep's
    confirmation seeds) share the data and are scored on the same validation set."""
    return json.dumps([to_dict(cfg.data), to_dict(cfg.backbone), cfg.feature_precision], sort_keys=True)


def prepare_data(cfg: SSNFConfig, extractor: FeatureExtractor, splits: Splits, device="cpu",
                 portable: bool = False) -> PreparedData:
    """Decode the training images, extract (or load from the disk cache) their features, build validation.

    ``portable``: also carry the extractor and the decoded test split (what a sweep ships to its trials)."""
    t0 = time.perf_counter()
    extractor.precision = cfg.feature_precision  # the features are those of the config's precision
    size = cfg.data.image_size
    images = load_images(splits.train, size)
    cache = FeatureCache()
    feats = cache.features(extractor, splits.train, images, size, device)
    t_features = time.perf_counter() - t0
    t = time.perf_counter()
    regions = object_regions(images)
    ranges = measure_ranges(images, textured=all(r is None for r in regions))
    t_regions = time.perf_counter() - t
    val = build_validation(extractor, load_images(splits.val, size), cfg.data.seed, device, cfg.data.reference,
                           cfg.data.nuisance, ranges)
    timings = {"features_s": t_features, "cache_hits": cache.hits, "cache_misses": cache.misses,
               "regions_s": t_regions}
    test = None
    if portable:
        extractor = extractor.cpu()
        test = decode_split(splits.test, size)
    timings["prepare_s"] = time.perf_counter() - t0
    return PreparedData(data_key(cfg), splits, images, [f.cpu() for f in feats], val, regions, timings,
                        extractor if portable else None, test, ranges)


def bank_key(cfg: SSNFConfig) -> str:
    """What a memory bank depends on: the prepared data (``data_key``) and the bank's own settings."""
    bank = {k: v for k, v in to_dict(cfg.bank).items() if k != "enabled"}
    return json.dumps([data_key(cfg), bank], sort_keys=True)

