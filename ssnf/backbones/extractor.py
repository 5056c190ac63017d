"""A frozen timm CNN that turns images into feature maps at chosen strides.

Contract: ``FeatureExtractor(images)`` takes a float batch ``[B, 3, H, W]`` with values in [0, 1]
(normalisation with the backbone's own mean/std happens inside) and returns one tensor per
configured stride, ``[B, channels[i], H / strides[i], W / strides[i]]``. It is always in eval mode,
its parameters never require gradients, and it pickles (Ray ships it).
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn

from ssnf.backbones.weights import (
    WeightsSource,
    hub_reachable,
    load_state_dict_file,
    match_state_dict,
    resolve_weights,
)
from ssnf.config import BackboneConfig
from ssnf.errors import BackboneError, WeightsError

RANDOM_INIT_SEED = 0  # backbone.pretrained=false: the weights every process builds
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Frozen multi-scale features of a pretrained CNN."""

    def __init__(
        self,
        body: nn.Module,
        name: str,
        strides: tuple[int, ...],
        channels: tuple[int, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        source: str,
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.strides = tuple(strides)
        self.channels = tuple(channels)
        self.source = source  # where the weights came from, for logs and results
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.body.parameters():
            p.requires_grad_(False)
        # channels_last: 2.5x faster than NCHW at batch 32 on a CPU (oneDNN), the same float32 arithmetic
        self.body.to(memory_format=torch.channels_last)
        self.precision = "fp32"  # set by ``SSNFModel.set_precision``: bf16 runs the body under autocast
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stays in eval mode: batch-norm statistics of a frozen backbone must not move."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            features = self.body(x)
        return [f.float().contiguous() for f in features]

    @classmethod
    def from_config(
        cls, cfg: BackboneConfig, reachable: Callable[[], bool] = hub_reachable
    ) -> "FeatureExtractor":
        return build_extractor(cfg, reachable)

    def describe(self) -> dict:
        return {"name": self.name, "strides": list(self.strides), "channels": list(self.channels),
                "weights": self.source}


def build_extractor(cfg: BackboneConfig, reachable: Callable[[], bool] = hub_reachable) -> FeatureExtractor:
    """Build the frozen extractor of ``cfg``, loading weights as ``resolve_weights`` finds them."""
    import timm

    name = cfg.name
    indices = _indices(cfg)

    source = resolve_weights(name, cfg.weights, reachable) if cfg.pretrained else WeightsSource("none")
    if source.kind == "hub":
        try:
            body = timm.create_model(name, pretrained=True, features_only=True, out_indices=indices)
        except Exception as exc:
            raise WeightsError(f"timm could not download weights for {name}: {exc}".splitlines()[0]) from None
        described = f"timm hub ({body.pretrained_cfg.get('hf_hub_id') or name})" if hasattr(body, "pretrained_cfg") else "timm hub"
        stats_from = body
    else:
        # random weights (pretrained=false) are the same in every process: a resumed or distributed run sees the
        # backbone it started with; the global random streams are left as they were
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            body = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
            full = timm.create_model(name, pretrained=False)
        stats_from = full
        described = "random init"
        if source.kind == "file":
            assert source.path is not None
            raw = load_state_dict_file(source.path, source.sha256)
            full.load_state_dict(match_state_dict(raw, full.state_dict(), str(source.path), name), strict=True)
            described = str(source.path)
            full_sd = full.state_dict()
            missing = [k for k in body.state_dict() if k not in full_sd]
            if missing:
                raise WeightsError(f"{name}'s feature model has keys its full model lacks ({missing[0]!r})")
            body.load_state_dict({k: full_sd[k] for k in body.state_dict()}, strict=True)
        del full
    mean, std = _norm_stats(stats_from, name)
    channels = tuple(int(c) for c in body.feature_info.channels())
    return FeatureExtractor(body, name, cfg.strides, channels, mean, std, described)


def check_backbone(cfg: BackboneConfig, reachable: Callable[[], bool] = hub_reachable) -> None:
    """What ``build_extractor(cfg)`` would refuse, without loading weights: an unknown model, a stride it does
    not have, weights that cannot be found. A sweep runs it for every extractor setting before any trial."""
    _indices(cfg)
    if cfg.pretrained:
        resolve_weights(cfg.name, cfg.weights, reachable)


def _indices(cfg: BackboneConfig) -> tuple[int, ...]:
    """The timm feature indices of ``cfg``'s strides; one-line errors for an unknown model or stride."""
    import timm

    cfg.validate()
    if not timm.is_model(cfg.name):
        close = difflib.get_close_matches(cfg.name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BackboneError(f"unknown backbone {cfg.name!r}{hint}: use a timm model name")
    return _out_indices(cfg.name, cfg.strides)


def _out_indices(name: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    import timm

    try:
        probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as exc:
        raise BackboneError(f"backbone {name!r} cannot give multi-scale features: {exc}".splitlines()[0]) from None
    reductions = [int(r) for r in probe.feature_info.reduction()]
    index_of: dict[int, int] = {}
    for i, r in enumerate(reductions):
        index_of.setdefault(r, i)
    bad = [s for s in strides if s not in index_of]
    if bad:
        raise BackboneError(
            f"backbone {name!r} has no feature level at stride {bad[0]}; its strides are "
            f"{', '.join(str(r) for r in sorted(index_of))}"
        )
    return tuple(index_of[s] for s in strides)


def _norm_stats(model: nn.Module, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("mean"):
        found = timm.get_pretrained_cfg(name)
        cfg = found.to_dict() if found is not None else {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std
