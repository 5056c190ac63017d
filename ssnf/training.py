"""Training the detector: a plain torch loop, no sweep framework in sight.

``train(cfg)`` checks everything it can before the first step (config, backbone, block names, shapes,
the splits), caches the frozen backbone's features of the normal training images, then runs epochs of
normal + synthetic batches. After each epoch it validates on held-out normal training images and on
anomalies made from them by the fixed *reference recipe* (``ssnf.synthesis.reference``), reports through
``callback`` and writes a checkpoint that ``resume`` continues exactly (per-epoch random streams).
Test images are not touched here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ssnf.backbones.extractor import build_extractor
from ssnf.checkpoint import load_checkpoint, save_checkpoint
from ssnf.config import MAP_KINDS, SSNFConfig, to_dict
from ssnf.data.dataset import DecodedSplit, decode_split
from ssnf.data.layouts import load_index
from ssnf.data.splits import Splits, make_splits
from ssnf.errors import ConfigError, DataError, SSNFError
from ssnf.features import FeatureCache, extract, load_images, to_tensor
from ssnf.loss import anchor_positions, gate_positions, scheduled_weight, ssnf_loss
from ssnf.model.detector import SSNFModel
from ssnf.model.subnets import parse_blocks
from ssnf.scoring import anomaly_maps, candidates, choose, image_map_kind, resolve, score
from ssnf.synthesis.patches import object_regions, synthesize
from ssnf.synthesis.reference import reference_set

EpochCallback = Callable[[dict, SSNFModel], None]  # (this epoch's report, the model as it is now)


class TrainingDiverged(SSNFError):
    """The loss became NaN or infinite."""


@dataclass
class ValidationSet:
    """Held-out normals and reference anomalies made from them, with their features."""

    features: list[torch.Tensor]
    labels: np.ndarray  # [N]
    masks: np.ndarray  # [N, S, S] bool
    kinds: list[str]


@dataclass
class TrainResult:
    model: SSNFModel
    config: SSNFConfig
    splits: Splits
    history: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def prepare(cfg: SSNFConfig, need_splits: bool = True, extractor=None) -> tuple[Splits | None, SSNFModel]:
    """Every check that can fail before training, cheapest first: config, shapes, backbone, data.

    ``extractor``: the frozen backbone, already built (a sweep ships the driver's with its weights, so a
    worker node needs no weights cache)."""
    cfg.validate()
    parse_blocks(cfg.model.blocks, len(cfg.backbone.strides))
    size = cfg.data.image_size
    bad = [s for s in cfg.backbone.strides if size % s]
    if bad:
        raise ConfigError(f"data.image_size={size} is not divisible by backbone stride {bad[0]}")
    if extractor is None:
        extractor = build_extractor(cfg.backbone)
    splits = make_splits(load_index(cfg.data), cfg.data) if need_splits else None
    if splits is not None:
        check_splits(cfg, splits)
    return splits, SSNFModel(extractor, cfg.model, cfg.train.seed).set_precision(cfg.train.precision)


def check_splits(cfg: SSNFConfig, splits: Splits) -> None:
    if not splits.val:
        raise DataError(
            f"no validation images for {cfg.data.category}: set data.val_fraction > 0 "
            "(validation uses held-out normal training images, never test images)"
        )
    if cfg.loss.weight > 0 and len(splits.train) < 2:
        raise DataError(f"synthesis needs at least 2 normal training images, {cfg.data.category} has {len(splits.train)}")


def build_validation(extractor, splits: Splits, images: np.ndarray, seed: int, device) -> ValidationSet:
    anomalies = reference_set(images, seed)
    all_images = np.concatenate([images, np.stack([a[0] for a in anomalies])])
    masks = np.concatenate([np.zeros(images.shape[:3], bool), np.stack([a[1] for a in anomalies])])
    labels = np.r_[np.zeros(len(images), int), np.ones(len(anomalies), int)]
    return ValidationSet(extract(extractor, all_images, device=device), labels, masks, [a[2] for a in anomalies])


@torch.no_grad()
def candidate_maps(model: SSNFModel, features: list[torch.Tensor], cfg: SSNFConfig, kinds: list[str], device,
                   batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Anomaly maps ``[N, S, S]`` of every kind in ``kinds`` for precomputed features (one flow pass)."""
    model.eval()
    size = (cfg.data.image_size, cfg.data.image_size)
    maps: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for start in range(0, len(features[0]), batch_size):
        outputs = model.flow_features([f[start:start + batch_size].to(device) for f in features])
        for kind in kinds:
            maps[kind].append(anomaly_maps(outputs, cfg.scoring, size, kind).cpu())
    return {k: torch.cat(v) for k, v in maps.items()}


def validate(model: SSNFModel, val: ValidationSet, cfg: SSNFConfig, device) -> dict:
    """Validation metrics; resolves the config's ``auto`` scoring and keeps the choice in ``model.scoring``."""
    pixel_kinds, image_pairs = candidates(cfg.scoring)
    needed = set(pixel_kinds) | {kind for kind, _ in image_pairs}  # "pixel" follows the pixel kinds
    kinds = [k for k in MAP_KINDS if k in needed]
    chosen, metrics = choose(candidate_maps(model, val.features, cfg, kinds, device), val.labels, val.masks,
                             cfg.scoring)
    model.scoring = chosen
    img, pix = metrics["val_image_auroc"], metrics["val_pixel_auroc"]
    return {"val_image_auroc": img, "val_pixel_auroc": pix, "val_score": 0.5 * (img + pix),
            "val_map": chosen.map, "val_image_map": image_map_kind(chosen), "val_image_score": chosen.image_score,
            "val_candidates": metrics["candidates"], "val_switch": metrics["switch"]}


def _synthetic_batch(images: np.ndarray, idx: np.ndarray, rng: np.random.Generator,
                     cfg: SSNFConfig, regions: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = len(images)
    out, masks = [], []
    for i in idx:
        j = int(rng.integers(n - 1))
        j = j + 1 if j >= i else j  # another image as the source
        image, mask = synthesize(images[i], images[j], rng, cfg.synthesis,
                                 None if regions is None else (regions[i], regions[j]))
        out.append(image)
        masks.append(mask)
    return np.stack(out), np.stack(masks)


@dataclass
class PreparedData:
    """What a run needs from its data, computed once: decoded training images, their backbone features,
    their object regions, the validation set. A sweep prepares it once per category and shares it between
    trials, with the frozen extractor (weights included) and the decoded test split, so that a trial on
    another node needs neither the dataset nor the weights cache."""

    key: str  # data_key() of the config it was made for
    splits: Splits
    train_images: np.ndarray  # uint8 [N, S, S, 3]
    train_features: list[torch.Tensor]  # per scale [N, C, h, w], CPU
    validation: ValidationSet
    regions: list  # ``object_regions`` of the training images (all None: a texture), for ``foreground=object``
    timings: dict = field(default_factory=dict)
    extractor: torch.nn.Module | None = None  # the frozen backbone the features came from
    test: DecodedSplit | None = None  # the test split at the model's size (reported, never used to choose)


def data_key(cfg: SSNFConfig) -> str:
    """The config values prepared data depend on: data, backbone (and the precision it runs in) and the seed
    of the validation anomalies."""
    return json.dumps([to_dict(cfg.data), to_dict(cfg.backbone), cfg.train.seed, cfg.train.precision], sort_keys=True)


def prepare_data(cfg: SSNFConfig, extractor, splits: Splits, device="cpu", portable: bool = False) -> PreparedData:
    """Decode the training images, extract (or load from the disk cache) their features, build validation.

    ``portable``: also carry the extractor and the decoded test split (what a sweep ships to its trials)."""
    t0 = time.perf_counter()
    extractor.precision = cfg.train.precision  # the features are those of the config's precision
    size = cfg.data.image_size
    images = load_images(splits.train, size)
    cache = FeatureCache()
    feats = cache.features(extractor, splits.train, images, size, device)
    t_features = time.perf_counter() - t0
    val = build_validation(extractor, splits, load_images(splits.val, size), cfg.train.seed, device)
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


def train(cfg: SSNFConfig, out_dir: Path | None = None, callback: EpochCallback | None = None,
          resume: Path | None = None, progress: bool | None = None, data: PreparedData | None = None) -> TrainResult:
    """Train a detector for ``cfg``; checkpoint to ``out_dir/checkpoint.pt`` after every epoch.

    ``data``: prepared data to use instead of reading and extracting (a sweep's shared copy); it must
    have been made for the same data, backbone and seed.
    """
    t_start = time.perf_counter()
    seed = cfg.train.seed
    seed_everything(seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits, model = prepare(cfg, need_splits=data is None, extractor=None if data is None else data.extractor)
    model.to(device)
    show = sys.stderr.isatty() if progress is None else progress
    if data is None:
        data = prepare_data(cfg, model.extractor, splits, device)
    elif data.key != data_key(cfg):
        raise SSNFError("the prepared data were made for another data / backbone / seed configuration")
    splits, train_images, val = data.splits, data.train_images, data.validation
    train_feats: list[torch.Tensor] | None = data.train_features
    model.fit_norms([f.to(device) for f in train_feats])
    noise_std = [cfg.train.feature_noise * f.std(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
                 for f in train_feats] if cfg.train.feature_noise > 0 else []
    if not cfg.train.feature_cache:  # the baseline the cache is measured against: backbone at every step
        train_feats = None

    synthetic_on = cfg.loss.weight > 0
    regions = None  # the category's objects, decided once over all its training images
    if synthetic_on and cfg.synthesis.object_aware and cfg.synthesis.foreground == "object":
        regions = data.regions
    pool_feats, pool_masks = None, None
    if synthetic_on and cfg.synthesis.pool_size:
        rng = np.random.default_rng([seed, 13])
        idx = rng.integers(len(train_images), size=cfg.synthesis.pool_size)
        pool_images, pool_masks = _synthetic_batch(train_images, idx, rng, cfg, regions)
        pool_feats = extract(model.extractor, pool_images, device=device)

    optimizer = torch.optim.Adam(model.flow_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume, device)
        if ckpt.config != cfg:
            raise SSNFError(f"cannot resume from {resume}: it was trained with a different config")
        model.flows.load_state_dict(ckpt.model.flows.state_dict())
        model.scoring = ckpt.model.scoring  # a run resumed after its last epoch trains nothing more
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
        history, start_epoch = ckpt.history, ckpt.epoch

    n = len(train_images)
    batch = min(cfg.train.batch_size, n)
    steps = max(1, n // batch)  # drop the ragged last batch: the worst-normal constraint needs a full one
    timings = {**data.timings, "setup_s": time.perf_counter() - t_start}
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([seed, 17, epoch])
        torch.manual_seed(seed * 1000 + epoch)
        order = rng.permutation(n)
        sums = {"loss": 0.0, "normal": 0.0, "synthetic": 0.0, "active": 0.0, "novel": 0.0, "anchor": 0.0,
                "weight": 0.0}
        t_synth = t_backbone = t_gate = 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show, leave=False)
        for step in bar:
            idx = order[step * batch:(step + 1) * batch]
            if train_feats is not None:
                normal_feats = [f[idx].to(device) for f in train_feats]
            else:
                t = time.perf_counter()
                normal_feats = model.extractor(to_tensor(train_images[idx], device))
                t_backbone += time.perf_counter() - t
            # train.feature_noise: one draw per batch row, shared by a normal image and its synthetic copy
            noise = [torch.randn_like(f) * s for f, s in zip(normal_feats, noise_std)] if noise_std else None
            synthetic, masks, push, anchor, synth_feats = None, None, None, None, None
            if synthetic_on:
                if pool_feats is not None:
                    pick = rng.integers(len(pool_masks), size=len(idx))
                    synth_feats = [f[pick].to(device) for f in pool_feats]
                    masks = torch.from_numpy(pool_masks[pick])[:, None].to(device)
                else:
                    t = time.perf_counter()
                    images, mask_np = _synthetic_batch(train_images, idx, rng, cfg, regions)
                    t_synth += time.perf_counter() - t
                    t = time.perf_counter()
                    synth_feats = model.extractor(to_tensor(images, device))
                    t_backbone += time.perf_counter() - t
                    masks = torch.from_numpy(mask_np)[:, None].to(device)
                t = time.perf_counter()
                push = gate_positions(cfg.loss, masks, normal_feats, synth_feats)
                t_gate += time.perf_counter() - t if push is not None else 0.0
                if pool_feats is None:  # a pool's images are not the batch's: nothing to hold them to
                    anchor = anchor_positions(cfg.loss, normal_feats, synth_feats)
            # one flow pass over the normal and the synthetic half (per-sample arithmetic: the same as two)
            normal, synthetic = _flow_halves(model, _noisy(normal_feats, noise),
                                             None if synth_feats is None else _noisy(synth_feats, noise))
            progress = (epoch * steps + step) / (cfg.train.epochs * steps)
            loss, terms = ssnf_loss(normal, synthetic, masks, cfg.loss, push, scheduled_weight(cfg.loss, progress),
                                    anchor)
            if not math.isfinite(terms["loss"]):
                raise TrainingDiverged(
                    f"loss became {terms['loss']} at epoch {epoch + 1}, step {step + 1}: "
                    "lower train.lr or model.clamp"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.flow_parameters(), cfg.train.grad_clip)
            optimizer.step()
            for k in sums:
                sums[k] += terms[k]
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
        report = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()},
                  "train_s": time.perf_counter() - t_epoch, "synthesis_s": t_synth, "backbone_s": t_backbone, "gate_s": t_gate}
        if epoch == start_epoch:  # this call's setup (checks, data, model), on the first epoch it trains
            report["setup_s"] = timings["setup_s"]
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
            t = time.perf_counter()
            report.update(validate(model, val, cfg, device))
            report["val_s"] = time.perf_counter() - t
        history.append(report)
        if out_dir is not None:
            save_checkpoint(Path(out_dir) / "checkpoint.pt", model, cfg, epoch + 1, history, optimizer)
        if show:
            shown = {k: round(v, 4) for k, v in report.items() if k in ("loss", "active", "novel", "val_image_auroc",
                                                                        "val_pixel_auroc", "val_score")}
            tqdm.write(f"epoch {epoch + 1}: {shown} ({report['train_s']:.1f} s)")
        if callback is not None:
            callback(dict(report), model)
    timings["total_s"] = time.perf_counter() - t_start
    model.eval()
    return TrainResult(model, cfg, splits, history, timings)


def _flow_halves(model: SSNFModel, normal: list[torch.Tensor], synthetic: list[torch.Tensor] | None):
    """Flow outputs of the normal and the synthetic features, from one pass over both (None: no synthetic half)."""
    if synthetic is None:
        return model.flow_features(normal), None
    b = len(normal[0])
    outputs = model.flow_features([torch.cat([n, s]) for n, s in zip(normal, synthetic)])
    return [(z[:b], j[:b]) for z, j in outputs], [(z[b:], j[b:]) for z, j in outputs]


def _noisy(features: list[torch.Tensor], noise: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """The flows' training inputs: the features plus ``train.feature_noise`` (the gate and the anchor see them clean)."""
    return features if noise is None else [f + n[:len(f)] for f, n in zip(features, noise)]


def with_overrides(cfg: SSNFConfig, **sections) -> SSNFConfig:
    """``with_overrides(cfg, loss={"weight": 0})``: a copy with some fields of some sections replaced."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    )
