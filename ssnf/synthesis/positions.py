"""Which positions of a synthetic image the self-supervised loss pushes, and which it holds.

Everything here works on the backbone features of a batch's normal images and of the synthetic images
made from them (per scale ``[B, C, h, w]``), and on the synthetic masks; nothing trains. ``ssnf.loss``
receives the result: ``push`` (``gate_positions``: the covered positions whose features are novel) and
``anchor`` (``anchor_positions``: the positions the synthesis left unchanged). See ``ssnf.loss`` for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssnf.config import LossConfig


def covered_positions(masks: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per scale, the positions ``[B, h, w]`` (bool) that the synthetic masks ``[B, 1, H, W]`` cover at least half of."""
    return [F.adaptive_avg_pool2d(masks.float(), shape)[:, 0] >= 0.5 for shape in shapes]


def _standardised(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]``, standardised per channel."""
    return ((features - mean) / std).flatten(2).transpose(1, 2)


def _nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Distance from each query ``[Q, C]`` to its nearest row of ``bank`` ``[M, C]``."""
    return torch.cat([torch.cdist(q, bank).min(dim=1).values for q in queries.split(chunk)]) if len(queries) else \
        queries.new_zeros(0)


@torch.no_grad()
def novel_positions(normal_feats: list[torch.Tensor], synthetic_feats: list[torch.Tensor],
                    covered: list[torch.Tensor], quantile: float, probes: int = 64) -> list[torch.Tensor]:
    """The covered positions whose features are novel: per scale ``[B, h, w]`` bool.

    Features are standardised per channel with the normal batch's statistics. The normal reference: for
    ``probes`` evenly spaced positions of each normal image, the distance to the nearest feature of the
    *other* normal images of the batch; its ``quantile`` is the threshold. A covered synthetic position is
    novel when its nearest normal feature (any normal image, any position) is farther than that. A patch
    of normal texture pasted elsewhere has a near normal neighbour and is not novel; a seam, a resized or
    foreign structure is. Needs at least two normal images.
    """
    out = []
    for fn, fs, cov in zip(normal_feats, synthetic_feats, covered):
        mean = fn.mean(dim=(0, 2, 3), keepdim=True)
        std = fn.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        n, s = _standardised(fn.float(), mean, std), _standardised(fs.float(), mean, std)
        b, hw, c = n.shape
        probe = torch.arange(0, hw, max(1, hw // probes), device=n.device)
        reference = []
        for i in range(b):
            others = torch.cat([n[:i], n[i + 1:]]).reshape(-1, c)
            reference.append(_nearest(n[i, probe], others))
        threshold = torch.quantile(torch.cat(reference), quantile)
        flat = cov.flatten(1)
        novel = torch.zeros_like(flat)
        novel[flat] = _nearest(s[flat], n.reshape(-1, c)) > threshold
        out.append(novel.view_as(cov))
    return out


def gate_positions(cfg: LossConfig, masks: torch.Tensor, normal_feats: list[torch.Tensor],
                   synthetic_feats: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The ``push`` argument of ``ssnf_loss`` for this config: the novel covered positions when the mask
    form is gated, else None (every covered position)."""
    if cfg.form != "mask" or cfg.gate != "novel":
        return None
    covered = covered_positions(masks, [f.shape[-2:] for f in synthetic_feats])
    return novel_positions(normal_feats, synthetic_feats, covered, cfg.gate_quantile)


@torch.no_grad()
def unchanged_positions(normal_feats: list[torch.Tensor], synthetic_feats: list[torch.Tensor],
                        tol: float) -> list[torch.Tensor]:
    """Per scale ``[B, h, w]`` bool: the positions whose synthetic feature differs from the original image's
    (the same row of ``normal_feats``) by less than ``tol`` of the original's norm."""
    return [(fs.float() - fn.float()).norm(dim=1) < tol * fn.float().norm(dim=1)
            for fn, fs in zip(normal_feats, synthetic_feats)]


def anchor_positions(cfg: LossConfig, normal_feats: list[torch.Tensor],
                     synthetic_feats: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The ``anchor`` argument of ``ssnf_loss`` for this config (None: nothing anchored). The synthetic
    images must be made from the normal images of the batch, in the same order."""
    if cfg.anchor != "unchanged" or cfg.weight == 0:
        return None
    return unchanged_positions(normal_feats, synthetic_feats, cfg.anchor_tol)
