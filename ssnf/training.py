"""Training the detector: a plain torch loop, no sweep framework in sight.

``train(cfg)`` checks everything it can before the first step (``prepare``: config, backbone, block names,
shapes, the splits), takes the data prepared once (``ssnf.prepared``: cached backbone features of the
normal training images, the validation set), then runs epochs. A step:

1. a batch of normal training images' features (``Batches.normal``; with ``train.augment``, some of the images
   under a nuisance transform, ``ssnf.synthesis.nuisance``, and their features from the backbone);
2. as many synthetic anomalies made from the same images, through the backbone (``Batches.synthetic``),
   with the positions the loss pushes and holds (``ssnf.synthesis.positions``);
3. one flow pass over both halves, ``ssnf.loss.ssnf_loss``, backward, clip, Adam.

With ``bank.enabled`` the model keeps a memory bank of the training features (``ssnf.model.bank``: built here
before the first step, or given by a sweep that shares it); it does not train. After each epoch it validates
(``ssnf.validation``), reports through ``callback`` and writes a checkpoint
that ``resume`` continues exactly (per-epoch random streams); after the last, the thresholds are set on the
validation normals (``Detector.calibrate``, ``ssnf.threshold``). Test images are not touched here.
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ssnf.backbones.extractor import build_extractor
from ssnf.checkpoint import load_checkpoint, save_checkpoint
from ssnf.config import LossConfig, SSNFConfig
from ssnf.data.layouts import load_index
from ssnf.data.splits import Splits, make_splits
from ssnf.devices import configure, resident, synchronize, to_device
from ssnf.errors import ConfigError, DataError, SSNFError
from ssnf.features import extract, to_tensor
from ssnf.inference import Detector
from ssnf.loss import scheduled_weight, ssnf_loss
from ssnf.model.bank import MemoryBank, build_bank, memory_available
from ssnf.model.detector import SSNFModel
from ssnf.model.subnets import parse_blocks
from ssnf.prepared import PreparedData, check_splits, data_key, prepare_data
from ssnf.synthesis.nuisance import augment_batch
from ssnf.synthesis.patches import synthetic_batch
from ssnf.synthesis.positions import anchor_positions, gate_positions
from ssnf.validation import validate

EpochCallback = Callable[[dict, SSNFModel], None]  # (this epoch's report, the model as it is now)
TERMS = ("loss", "normal", "synthetic", "active", "novel", "anchor", "weight")  # ssnf_loss's terms, averaged per epoch


class TrainingDiverged(SSNFError):
    """The loss became NaN or infinite."""


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX (elsewhere bf16 autocast is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: unknown, say yes rather than warn for nothing
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


@dataclass
class Batch:
    """One step's inputs: normal features, and (when the loss has a synthetic term) the synthetic half."""

    normal: list[torch.Tensor]  # per scale [B, C, h, w], clean (the gate and the anchor compare these)
    noise: list[torch.Tensor] | None  # train.feature_noise: one draw per row, shared by both halves
    synthetic: list[torch.Tensor] | None = None
    masks: torch.Tensor | None = None  # [B, 1, S, S] bool
    push: list[torch.Tensor] | None = None  # the positions the loss pushes (None: every covered one)
    anchor: list[torch.Tensor] | None = None  # the positions held at their original NLL


class Batches:
    """Where a step's features come from: the cached normal features, synthesis + backbone for the
    synthetic half (or a fixed pool), and the timing of each part."""

    def __init__(self, cfg: SSNFConfig, model: SSNFModel, data: PreparedData, device) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        self.images = data.train_images
        feats = data.train_features
        self.noise_std = [cfg.train.feature_noise * f.std(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
                          for f in feats] if cfg.train.feature_noise > 0 else []
        # without the cache, the backbone runs on every normal batch (the baseline the cache is measured against);
        # with it, on a GPU the features stay there for the run (``resident``: when they are small beside its memory)
        self.feats = resident(feats, device) if cfg.train.feature_cache else None
        self.synthetic_on = cfg.loss.weight > 0
        synthesis = cfg.synthesis
        # the category's objects, decided once over all its training images
        self.regions = data.regions if (self.synthetic_on and synthesis.object_aware
                                        and synthesis.foreground == "object") else None
        self.pool_feats, self.pool_masks = None, None
        if self.synthetic_on and synthesis.pool_size:
            rng = np.random.default_rng([cfg.train.seed, 13])
            idx = rng.integers(len(self.images), size=synthesis.pool_size)
            pool_images, self.pool_masks = synthetic_batch(self.images, idx, rng, synthesis, self.regions)
            self.pool_feats = resident(extract(model.extractor, pool_images, device=device), device)
        self.augment = cfg.train.augment if cfg.train.augment != "none" else None
        self.ranges = data.ranges.scaled(cfg.train.augment_strength)
        self.timings = {"synthesis_s": 0.0, "backbone_s": 0.0, "gate_s": 0.0, "augment_s": 0.0}

    def _timed(self, part: str, fn, *args):
        on_device = part == "backbone_s"  # synthesis and augmentation run on the host: they overlap queued GPU work
        if on_device:
            synchronize(self.device)  # on a GPU: the part's own work, not what was queued before it (CPU: nothing)
        t = time.perf_counter()
        out = fn(*args)
        if on_device:
            synchronize(self.device)
        self.timings[part] += time.perf_counter() - t
        return out

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> Batch:
        images = None  # the batch's images when augmented (else self.images[idx])
        if self.feats is not None:
            normal = [to_device(f[idx], self.device) for f in self.feats]
        else:
            normal = self._timed("backbone_s", self.model.extractor, to_tensor(self.images[idx], self.device))
        if self.augment is not None:
            images, changed = self._timed("augment_s", augment_batch, self.images[idx],
                                          np.random.default_rng(rng.integers(2**63)), self.ranges, self.augment,
                                          self.cfg.train.augment_p)
            if changed.any():  # the cached features are those of the unaugmented images: the changed ones are recomputed
                rows = torch.from_numpy(np.flatnonzero(changed)).to(self.device)
                fresh = self._timed("backbone_s", self.model.extractor, to_tensor(images[changed], self.device))
                normal = [n.index_copy(0, rows, f.to(n.dtype)) for n, f in zip(normal, fresh)]
        noise = [torch.randn_like(f) * s for f, s in zip(normal, self.noise_std)] if self.noise_std else None
        batch = Batch(normal, noise)
        if self.synthetic_on:
            self._add_synthetic(batch, idx, rng, images)
        return batch

    def _add_synthetic(self, batch: Batch, idx: np.ndarray, rng: np.random.Generator,
                       images: np.ndarray | None = None) -> None:
        loss = self.cfg.loss
        if self.pool_feats is not None:
            pick = rng.integers(len(self.pool_masks), size=len(idx))
            batch.synthetic = [to_device(f[pick], self.device) for f in self.pool_feats]
            batch.masks = to_device(torch.from_numpy(self.pool_masks[pick])[:, None], self.device)
        else:
            if images is not None and len(idx) >= 2:  # augmented: made from the batch's images, patches from the batch
                regions = None if self.regions is None else [self.regions[i] for i in idx]
                images, masks = self._timed("synthesis_s", synthetic_batch, images, np.arange(len(idx)), rng,
                                            self.cfg.synthesis, regions)
            else:
                images, masks = self._timed("synthesis_s", synthetic_batch, self.images, idx, rng,
                                            self.cfg.synthesis, self.regions)
            batch.synthetic = self._timed("backbone_s", self.model.extractor, to_tensor(images, self.device))
            batch.masks = to_device(torch.from_numpy(masks)[:, None], self.device)
        synchronize(self.device)
        t = time.perf_counter()
        batch.push = gate_positions(loss, batch.masks, batch.normal, batch.synthetic)
        synchronize(self.device)
        self.timings["gate_s"] += time.perf_counter() - t if batch.push is not None else 0.0
        if self.pool_feats is None:  # a pool's images are not the batch's: nothing to hold them to
            batch.anchor = anchor_positions(loss, batch.normal, batch.synthetic)


def step_loss(model: SSNFModel, batch: Batch, loss: LossConfig, progress: float) -> tuple[torch.Tensor, dict]:
    """The loss of one batch at ``progress`` (share of training done): one flow pass over both halves."""
    normal, synthetic = _flow_halves(model, _noisy(batch.normal, batch.noise),
                                     None if batch.synthetic is None else _noisy(batch.synthetic, batch.noise))
    return ssnf_loss(normal, synthetic, batch.masks, loss, batch.push, scheduled_weight(loss, progress), batch.anchor)


def train(cfg: SSNFConfig, out_dir: Path | None = None, callback: EpochCallback | None = None,
          resume: Path | None = None, progress: bool | None = None, data: PreparedData | None = None,
          slim_checkpoints: bool = False, thresholds: bool = True, bank: MemoryBank | None = None,
          on_start: Callable[[], None] | None = None) -> TrainResult:
    """Train a detector for ``cfg``; checkpoint to ``out_dir/checkpoint.pt`` after every epoch.

    ``data``: prepared data to use instead of reading and extracting (a sweep's shared copy); it must
    have been made for the same data, backbone and seed. ``slim_checkpoints``: leave the frozen backbone's
    weights out of the checkpoints (a sweep's trials: the backbone is the experiment's, not the trial's).
    ``thresholds``: set the decision thresholds after the last epoch (a sweep's trials skip it: they are ranked,
    not deployed; ``make models`` trains the chosen configs again). ``bank``: the memory bank of ``data``'s
    training features under ``cfg.bank`` (a sweep's shared one; default: built here when ``bank.enabled``).
    ``on_start``: called once every check has passed, before the first step (``ssnf train`` writes its
    ``config.yaml`` there, so that a refused run leaves no file behind).
    """
    t_start = time.perf_counter()
    model, data, device = _setup(cfg, data, bank, thresholds)
    show = sys.stderr.isatty() if progress is None else progress
    batches = Batches(cfg, model, data, device)
    optimizer = torch.optim.Adam(model.flow_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    history, start_epoch = _resume(resume, cfg, model, optimizer, device) if resume is not None else ([], 0)
    timings = {**data.timings, "setup_s": time.perf_counter() - t_start}
    if on_start is not None:
        on_start()
    for epoch in range(start_epoch, cfg.train.epochs):
        report = _train_epoch(cfg, model, batches, optimizer, epoch, show)
        if epoch == start_epoch:  # this call's setup (checks, data, model), on the first epoch it trains
            report["setup_s"] = timings["setup_s"]
        last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.val_every == 0 or last:
            report.update(_validate_epoch(cfg, model, data, device, thresholds and last))
        history.append(report)
        if out_dir is not None:
            save_checkpoint(Path(out_dir) / "checkpoint.pt", model, cfg, epoch + 1, history, optimizer,
                            backbone=not slim_checkpoints)
        if show:
            shown = {k: round(v, 4) for k, v in report.items() if k in ("loss", "active", "novel", "val_image_auroc",
                                                                        "val_pixel_auroc", "val_score")}
            tqdm.write(f"epoch {epoch + 1}: {shown} ({report['train_s']:.1f} s)")
        if callback is not None:
            callback(dict(report), model)
    timings["total_s"] = time.perf_counter() - t_start
    model.eval()
    return TrainResult(model, cfg, data.splits, history, timings)


def _setup(cfg: SSNFConfig, data: PreparedData | None, bank: MemoryBank | None,
           thresholds: bool) -> tuple[SSNFModel, PreparedData, torch.device]:
    """Seeds, threads, device; every check before the first step; the model with its norms (and bank) fitted."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    configure(device)
    if cfg.train.precision == "bf16" and not native_bf16(device):
        warnings.warn(f"train.precision=bf16 on a {device.type} without bfloat16 arithmetic is emulated and slower "
                      "than float32: set train.precision=fp32 here", stacklevel=3)
    splits, model = prepare(cfg, need_splits=data is None, extractor=None if data is None else data.extractor)
    model.to(device)
    if data is None:
        data = prepare_data(cfg, model.extractor, splits, device)
    elif data.key != data_key(cfg):
        raise SSNFError("the prepared data were made for another data / backbone / seed / precision configuration")
    normals = int(data.validation.clean_normals.sum())
    if thresholds and normals < 2:  # before the first step, not after the last epoch
        raise DataError(f"{normals} validation normal for {cfg.data.category}: the thresholds need at least 2 "
                        "(raise data.val_fraction)")
    model.fit_norms([f.to(device) for f in data.train_features])
    if cfg.bank.enabled:
        if bank is None:
            t = time.perf_counter()
            bank = build_bank(data.train_features, cfg.bank, cfg.data.seed, memory_available())
            data.timings["bank_s"] = time.perf_counter() - t
        model.attach_bank(MemoryBank.from_state(bank.state()).to(device))  # its own copy: validation sets its fusion
    return model, data, device


def _train_epoch(cfg: SSNFConfig, model: SSNFModel, batches: Batches, optimizer: torch.optim.Optimizer, epoch: int,
                 show: bool) -> dict:
    """One epoch's steps (its own random streams, so ``resume`` is exact); the mean loss terms and timings."""
    model.train()
    t_epoch = time.perf_counter()
    seed = cfg.train.seed
    n = len(batches.images)
    batch_size = min(cfg.train.batch_size, n)
    steps = max(1, n // batch_size)  # drop the ragged last batch: the worst-normal constraint needs a full one
    batches.timings = dict.fromkeys(batches.timings, 0.0)
    rng = np.random.default_rng([seed, 17, epoch])
    torch.manual_seed(seed * 1000 + epoch)
    order = rng.permutation(n)
    sums = dict.fromkeys(TERMS, 0.0)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show, leave=False)
    for step in bar:
        batch = batches.batch(order[step * batch_size:(step + 1) * batch_size], rng)
        loss, terms = step_loss(model, batch, cfg.loss, (epoch * steps + step) / (cfg.train.epochs * steps))
        if not math.isfinite(terms["loss"]):
            raise TrainingDiverged(f"loss became {terms['loss']} at epoch {epoch + 1}, step {step + 1}: "
                                   "lower train.lr or model.clamp")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.flow_parameters(), cfg.train.grad_clip)
        optimizer.step()
        for k in sums:
            sums[k] += terms[k]
        bar.set_postfix(loss=f"{terms['loss']:.3f}")
    synchronize(batches.device)  # the epoch's time includes its last queued step
    return {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()},
            "train_s": time.perf_counter() - t_epoch, **batches.timings}


def _validate_epoch(cfg: SSNFConfig, model: SSNFModel, data: PreparedData, device: torch.device,
                    thresholds: bool) -> dict:
    """Validation metrics (and the scoring they choose); with ``thresholds``, the final model's thresholds."""
    t = time.perf_counter()
    report = validate(model, data.validation, cfg.scoring, cfg.data.image_size, device, cfg.threshold)
    if thresholds:  # from the validation normals, through the inference path
        threshold = Detector.from_model(model, cfg, device).calibrate(data.validation)
        report["threshold_image"], report["threshold_pixel"] = threshold.image, threshold.pixel
    report["val_s"] = time.perf_counter() - t
    return report


def _resume(path: Path, cfg: SSNFConfig, model: SSNFModel, optimizer: torch.optim.Optimizer,
            device) -> tuple[list[dict], int]:
    """Load the flows, the scoring and the optimizer of the checkpoint at ``path``: its history and epoch."""
    ckpt = load_checkpoint(path, device, extractor=model.extractor)
    if ckpt.config != cfg:
        raise SSNFError(f"cannot resume from {path}: it was trained with a different config")
    model.flows.load_state_dict(ckpt.model.flows.state_dict())
    model.scoring = ckpt.model.scoring  # a run resumed after its last epoch trains nothing more
    if ckpt.model.bank is not None and model.bank is not None:
        model.bank.fusion.copy_(ckpt.model.bank.fusion.to(device))
    model.threshold = ckpt.model.threshold
    if ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    return ckpt.history, ckpt.epoch


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
