"""Saving and loading a trained detector: one file, safe to load (``weights_only``), self-contained.

The file holds the resolved config (nested plain values), the flows, the frozen backbone's weights
(so loading needs neither the weight cache nor a hub), the memory bank (``bank.enabled``: its entries and the
fused maps' standardisation), the scoring chosen on validation, the thresholds set on
validation normals after the last epoch (``ssnf.threshold``), and, for resuming, the optimizer state, the
epoch and the history.

A *slim* checkpoint (``backbone=False``: a sweep's per-epoch trial checkpoints) keeps only the backbone's
fingerprint instead of its weights; loading it takes the extractor from the caller or rebuilds it from the
config (weights cache) and refuses one whose weights differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssnf.backbones.extractor import FeatureExtractor, build_extractor
from ssnf.config import ScoringConfig, SSNFConfig, ThresholdConfig, from_dict, to_dict
from ssnf.errors import SSNFError
from ssnf.features import extractor_fingerprint
from ssnf.files import atomic_path
from ssnf.model.bank import MemoryBank
from ssnf.model.detector import SSNFModel
from ssnf.threshold import Threshold

FORMAT = "ssnf-checkpoint/1"


@dataclass
class Checkpoint:
    model: SSNFModel
    config: SSNFConfig
    epoch: int  # epochs completed
    history: list[dict] = field(default_factory=list)
    optimizer: dict | None = None
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: Path, model: SSNFModel, cfg: SSNFConfig, epoch: int, history: list[dict],
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    backbone: bool = True) -> Path:
    """Write atomically: a reader never sees half a file, a crash never leaves one. ``backbone=False``: the
    backbone's fingerprint instead of its weights (a slim checkpoint)."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": to_dict(cfg),
        "epoch": int(epoch),
        "history": history,
        "flows": model.flows.state_dict(),
        "extractor": model.extractor.body.state_dict() if backbone else None,
        "extractor_sha256": None if backbone else extractor_fingerprint(model.extractor),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": extra or {},
        "scoring": to_dict(model.scoring) if model.scoring is not None else None,
        "thresholds": {k: t.to_dict() for k, t in model.thresholds.items()},
        "bank": model.bank.state() if model.bank is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _migrate(config: dict) -> dict:
    """Fill keys that older ssnf versions did not write with what those versions did, not today's defaults."""
    for section, before in (("loss", LOSS_BEFORE), ("data", DATA_BEFORE)):
        values = config.get(section)
        if isinstance(values, dict):
            config = {**config, section: {**before, **values}}
    return config


# keys older checkpoints lack, as those versions behaved: before the novelty gate every covered position was
# pushed, before the anchor nothing was held; validation was the standard recipe without nuisance normals
LOSS_BEFORE = {"gate": "none", "anchor": "none"}
DATA_BEFORE = {"reference": "standard", "nuisance": "none"}


def _checked(payload: Any, path: Path) -> dict:
    """``payload`` if it is a checkpoint of the format this ssnf reads; one line saying what it is otherwise."""
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(fmt, str) and fmt.startswith("ssnf-checkpoint/") and fmt != FORMAT:
        raise SSNFError(f"checkpoint {path} has format {fmt}, this ssnf reads {FORMAT}: use the ssnf that wrote it")
    if fmt != FORMAT:
        raise SSNFError(f"{path} is not an ssnf checkpoint ({FORMAT})")
    return payload


def set_thresholds(path: Path, thresholds: dict[str, Threshold], cfg: ThresholdConfig) -> Path:
    """Write ``thresholds`` (per precision) into the checkpoint at ``path`` (``ssnf calibrate``) and the
    ``threshold`` section they were set with into its config; everything else as it was."""
    path = Path(path)
    payload = _checked(torch.load(path, map_location="cpu", weights_only=True), path)
    payload["thresholds"] = {k: t.to_dict() for k, t in thresholds.items()}
    payload["config"] = {**payload["config"], "threshold": to_dict(cfg)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu", extractor: FeatureExtractor | None = None) -> Checkpoint:
    """The checkpoint at ``path``. ``extractor``: the frozen backbone to use (a slim checkpoint's, checked
    against its fingerprint); default: the one stored in the file, else rebuilt from the config."""
    path = Path(path)
    if not path.is_file():
        raise SSNFError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise SSNFError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    payload = _checked(payload, path)
    try:
        cfg = from_dict(SSNFConfig, _migrate(payload["config"]))
    except SSNFError as exc:
        raise SSNFError(f"checkpoint {path} was written by another ssnf version: {exc}") from None
    if extractor is None and payload["extractor"] is not None:
        extractor = build_extractor(dataclasses.replace(cfg.backbone, pretrained=False, weights=""))
        try:
            extractor.body.load_state_dict(payload["extractor"], strict=True)
        except RuntimeError as exc:
            raise SSNFError(f"checkpoint {path}: its backbone weights do not fit {cfg.backbone.name} here "
                            f"({str(exc).splitlines()[0]})") from None
    elif extractor is None:
        extractor = build_extractor(cfg.backbone)
    extractor.precision = cfg.feature_precision
    expected = payload.get("extractor_sha256")
    if expected and extractor_fingerprint(extractor) != expected:
        raise SSNFError(f"{path} is a slim checkpoint and the backbone at hand is not the one it was trained on "
                        f"({cfg.backbone.name}, weights {extractor.source}): load it with that backbone")
    model = SSNFModel(extractor, cfg.model, cfg.train.seed).set_precision(cfg.train.precision)
    try:
        model.flows.load_state_dict(payload["flows"], strict=True)
    except RuntimeError as exc:
        raise SSNFError(f"checkpoint {path} was written by another ssnf version: its flows do not match this "
                        f"model ({str(exc).splitlines()[0]})") from None
    if payload.get("bank") is not None:
        model.attach_bank(MemoryBank.from_state(payload["bank"]))
    if payload.get("scoring") is not None:
        model.scoring = from_dict(ScoringConfig, payload["scoring"], "scoring.")
    model.thresholds = {k: Threshold.from_dict(t) for k, t in (payload.get("thresholds") or {}).items()}
    model.to(device)
    return Checkpoint(model, cfg, int(payload["epoch"]), list(payload["history"]), payload["optimizer"],
                      dict(payload.get("extra") or {}))
