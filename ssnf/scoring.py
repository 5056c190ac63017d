"""From flow outputs to anomaly maps and image scores.

Per scale, a map over positions (``scoring.map``):
- ``density`` (the paper): ``-mean_c exp(-z_c^2 / 2)``, the negated mean per-channel likelihood;
- ``fastflow``: ``-exp(-mean_c z_c^2 / 2)``;
- ``z2``: ``mean_c z_c^2 / 2``;
- ``nll``: the full NLL per dimension at that position, Jacobian included.
Maps are upsampled (bilinear) to the input size, averaged over scales, optionally smoothed with a
Gaussian; the image score is the map's maximum or the mean of its top ``topk`` share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssnf.config import ScoringConfig
from ssnf.loss import FlowOutputs


def position_maps(outputs: FlowOutputs, kind: str) -> list[torch.Tensor]:
    maps = []
    for z, log_jac in outputs:
        sq = z.pow(2)
        if kind == "density":
            maps.append(-torch.exp(-0.5 * sq).mean(dim=1))
        elif kind == "fastflow":
            maps.append(-torch.exp(-0.5 * sq.mean(dim=1)))
        elif kind == "z2":
            maps.append(0.5 * sq.mean(dim=1))
        elif kind == "nll":
            maps.append((0.5 * sq.sum(dim=1) - log_jac) / z.shape[1])
        else:
            raise ValueError(f"unknown map kind {kind!r}")
    return maps


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B, H, W]`` with reflected borders."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def anomaly_maps(outputs: FlowOutputs, cfg: ScoringConfig, size: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` anomaly maps at the input size."""
    per_scale = [
        F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        for m in position_maps(outputs, cfg.map)
    ]
    maps = torch.stack(per_scale).mean(dim=0)
    if cfg.smooth_sigma > 0:
        maps = gaussian_blur(maps, cfg.smooth_sigma)
    return maps


def image_scores(maps: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    flat = maps.flatten(1)
    if cfg.image_score == "max":
        return flat.max(dim=1).values
    k = max(1, int(round(cfg.topk * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
