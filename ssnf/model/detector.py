"""The detector: a frozen feature extractor and one flow per feature scale.

Build it with ``SSNFModel.build(cfg)``, train it with ``ssnf.training.train``, save and load it with
``ssnf.checkpoint``; call it on images in [0, 1] to get per-scale flow outputs ``(z, log_jac)``, and
``ssnf.scoring`` turns those into maps and scores.
"""

from __future__ import annotations

import torch
from torch import nn

from ssnf.backbones.extractor import FeatureExtractor, build_extractor
from ssnf.config import PRECISIONS, BackboneConfig, ModelConfig, ScoringConfig
from ssnf.errors import ConfigError
from ssnf.model.bank import MemoryBank
from ssnf.model.flow import ScaleFlow, seed_permutations
from ssnf.model.subnets import CouplingSubnet, SubnetSpec, parse_blocks


def per_scale(values: tuple[int, ...], default: int, n_scales: int, key: str) -> list[int]:
    """One value per feature scale: ``values`` (one per scale) or, empty, ``default`` on every scale."""
    if not values:
        return [default] * n_scales
    if len(values) != n_scales:
        raise ConfigError(f"{key}={list(values)} has {len(values)} values but the backbone gives {n_scales} scales")
    return list(values)


class SSNFModel(nn.Module):
    """``images -> [(z, log_jac) per scale]``; only the flows train. ``bank``: the memory bank of the training
    images' patch features (``bank.enabled``; None without), scored beside the flows (``ssnf.scoring``)."""

    def __init__(self, extractor: FeatureExtractor, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        cfg.validate()
        self.extractor = extractor
        # The scoring chosen on validation for the config's ``auto`` settings (``ssnf.scoring.choose``);
        # None until the model is validated.
        self.scoring: ScoringConfig | None = None
        # The thresholds set on validation normals after training (``ssnf.threshold.Threshold``), one per
        # arithmetic (train.precision, and fp32 for exported files): scores differ between them
        self.thresholds: dict = {}
        self.bank: MemoryBank | None = None  # attach with ``attach_bank``
        self.precision = "fp32"  # the model's arithmetic (``set_precision``); its thresholds are keyed by it
        n = len(extractor.channels)
        stacks = parse_blocks(cfg.blocks, n)
        couplings = per_scale(cfg.scale_couplings, cfg.couplings, n, "model.scale_couplings")
        hidden = per_scale(cfg.scale_hidden, cfg.hidden, n, "model.scale_hidden")
        seed_permutations(seed)
        torch.manual_seed(seed)
        self.flows = nn.ModuleList(
            ScaleFlow(
                channels,
                SubnetSpec.from_config(cfg, stack, width),
                count, cfg.clamp, cfg.permute_soft, cfg.norm,
                cfg.pos_channels if cfg.position else 0,
            )
            for channels, stack, count, width in zip(extractor.channels, stacks, couplings, hidden)
        )

    @classmethod
    def build(cls, backbone: BackboneConfig, model: ModelConfig, seed: int = 0) -> "SSNFModel":
        return cls(build_extractor(backbone), model, seed)

    def flow_features(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run each scale's flow on its (already extracted) features."""
        return [flow(f) for flow, f in zip(self.flows, features)]

    def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.flow_features(self.extractor(images))

    @torch.no_grad()
    def fit_norms(self, features: list[torch.Tensor]) -> None:
        """Fix the per-channel affine in front of each flow from training features (per scale ``[N, C, h, w]``)."""
        for flow, f in zip(self.flows, features):
            if flow.norm is not None:
                flow.norm.fit(f)

    @property
    def threshold(self):
        """The thresholds of the precision the model runs in now (None: not calibrated in it)."""
        return self.thresholds.get(self.precision)

    @threshold.setter
    def threshold(self, value) -> None:
        if value is None:
            self.thresholds.pop(self.precision, None)
        else:
            self.thresholds[value.precision] = value

    def set_precision(self, precision: str) -> "SSNFModel":
        """``fp32`` or ``bf16``: the arithmetic of the backbone and the coupling subnets (``train.precision``).
        bf16 runs them under autocast; the couplings' affine, the log-determinants and the loss stay float32.
        With a memory bank the backbone stays float32 (``SSNFConfig.feature_precision``)."""
        if precision not in PRECISIONS:
            raise ConfigError(f"train.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.extractor.precision = "fp32" if self.bank is not None else precision
        for module in self.flows.modules():
            if isinstance(module, CouplingSubnet):
                module.precision = precision
        return self

    def attach_bank(self, bank: MemoryBank | None) -> "SSNFModel":
        """Keep ``bank`` as the model's memory bank (its backbone then runs in float32)."""
        self.bank = bank
        return self.set_precision(self.precision)

    def flow_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.flows.parameters() if p.requires_grad]
