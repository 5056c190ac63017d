"""The self-supervised flow loss.

Per position, the negative log-likelihood of a feature vector under the flow is
``0.5 * ||z||^2 - log|det J|`` (summed over channels; the constant ``0.5 log 2pi`` per dimension is
left out). An image's NLL sums this over positions and scales; ssnf reports it *per dimension*
(divided by the number of feature values) so that numbers are comparable across sizes.

``loss = mean NLL(normal) + w * synthetic_term``, where the synthetic term pushes the likelihood of
synthetic anomalies down, constrained so that training stays focused on normal data:

- ``constrained`` (the paper): ``-mean NLL(s)`` over the synthetic images whose NLL is still below the
  worst (largest) normal NLL of the batch, and below ``cap`` if one is set. Once a synthetic image is
  less likely than every normal one it no longer counts, so extreme anomalies cannot dominate.
- ``hinge``: ``mean relu(worst + margin - NLL(s))``: every synthetic image is pushed until it is
  ``margin`` nats per dimension past the worst normal one.
- ``mask``: a hinge per position, only where the synthetic mask covers at least half of a position:
  ``relu(mean normal position NLL + margin - NLL(position))`` per scale. The reference is the *mean*
  normal position, not the worst: the worst of thousands of positions is an outlier that the push
  drags up with it, and training then chases it without end (measured on tire: NLL 1e9 by epoch 6).
  With ``gate='novel'`` only the covered positions whose backbone features are *novel* are pushed
  (``novel_positions``): a patch cut from another normal image is mostly normal content, and pushing
  normal content down fights the normal term (measured on magnetic_tile, whose patches are normal tile
  texture: validation pixel AUROC fell epoch after epoch).

With ``anchor='unchanged'`` the positions of a synthetic image that the synthesis left unchanged (their
backbone features moved by less than ``anchor_tol`` of their norm; ``unchanged_positions``) must not rise
above the NLL of the same position in the original image: ``w * mean relu(NLL_s - NLL_original)`` over
them. Without it the push is free to raise a whole synthetic image (the couplings' self-attention sees
every position), and on tire it did: positions whose features a patch left unchanged rose by 0.16 / 0.37
nats per dimension on the median (strides 8 / 16; w = 0: 0.002 / 0.003) and the patch's surroundings by
1.35 (``bench/transfer.py``, validation images), so the model flagged a defect's surroundings with it.

``w = 0`` is plain FastFlow training. ``schedule='linear'`` lowers ``w`` step by step to 0 over training
(``scheduled_weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssnf.config import LossConfig

FlowOutputs = list[tuple[torch.Tensor, torch.Tensor]]  # per scale: (z [B, C, h, w], log_jac [B, h, w])


def nll_maps(outputs: FlowOutputs) -> list[torch.Tensor]:
    """Per scale, NLL per position summed over channels: ``[B, h, w]``."""
    return [0.5 * z.pow(2).sum(dim=1) - log_jac for z, log_jac in outputs]


def position_nll(outputs: FlowOutputs) -> list[torch.Tensor]:
    """Per scale, NLL per position and per feature dimension: ``[B, h, w]``."""
    return [m / z.shape[1] for m, (z, _) in zip(nll_maps(outputs), outputs)]


def image_nll(outputs: FlowOutputs) -> torch.Tensor:
    """NLL per image and per feature dimension, over every scale: ``[B]``."""
    total = sum(m.sum(dim=(1, 2)) for m in nll_maps(outputs))
    dims = sum(z[0].numel() for z, _ in outputs)
    return total / dims


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


def anchor_term(normal: FlowOutputs, synthetic: FlowOutputs, anchor: list[torch.Tensor]) -> torch.Tensor:
    """Mean rise of the synthetic NLL per dimension over the anchored positions, against the same position of
    the original image (its NLL detached: the original is not pulled up to meet it)."""
    rises, count = [], 0
    for nll_n, nll_s, where in zip(position_nll(normal), position_nll(synthetic), anchor):
        rises.append(F.relu(nll_s - nll_n.detach())[where].sum())
        count += int(where.sum())
    return sum(rises) / max(count, 1)


def scheduled_weight(cfg: LossConfig, progress: float) -> float:
    """``w`` at ``progress`` in [0, 1): the share of training steps already taken."""
    if cfg.schedule == "linear":
        return cfg.weight * (1.0 - progress)
    return cfg.weight


def ssnf_loss(normal: FlowOutputs, synthetic: FlowOutputs | None, synthetic_masks: torch.Tensor | None,
              cfg: LossConfig, push: list[torch.Tensor] | None = None,
              weight: float | None = None,
              anchor: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss and its terms: ``normal``, ``synthetic``, ``active`` (share of synthetic images, or
    for ``mask`` of covered positions, still pushed), ``novel`` (``mask``: share of covered positions the
    gate lets through; 1 without a gate), ``anchor`` (the anchor term, 0 without one) and ``weight`` (the
    ``w`` used).

    ``push``: for ``mask``, per scale the covered positions to push (``novel_positions``); default all of them.
    ``weight``: ``w`` for this step (``scheduled_weight``); default ``cfg.weight``.
    ``anchor``: per scale the synthetic positions held at their original NLL (``anchor_positions``); the
    synthetic images must then be made from the normal ones, in the same order.
    """
    w = cfg.weight if weight is None else weight
    nll_n = image_nll(normal)
    normal_term = nll_n.mean()
    if w == 0 or synthetic is None:
        value = float(normal_term.detach())
        return normal_term, {"loss": value, "normal": value, "synthetic": 0.0, "active": 0.0, "novel": 0.0,
                             "anchor": 0.0, "weight": 0.0}
    worst = nll_n.max().detach()
    novel = 0.0
    if cfg.form == "mask":
        if synthetic_masks is None:
            raise ValueError("loss.form='mask' needs the synthetic masks")
        covered = covered_positions(synthetic_masks, [z.shape[-2:] for z, _ in synthetic])
        push = covered if push is None else [p & c for p, c in zip(push, covered)]
        total = sum(int(c.sum()) for c in covered)
        novel = sum(int(p.sum()) for p in push) / total if total else 0.0
        term, active = _mask_term(normal, synthetic, push, cfg.margin, total)
    else:
        nll_s = image_nll(synthetic)
        if cfg.form == "constrained":
            counted = nll_s.detach() < worst
            if cfg.cap > 0:
                counted &= nll_s.detach() < cfg.cap
            term = -(nll_s * counted).sum() / counted.sum().clamp_min(1)
            active = float(counted.float().mean())
        else:  # hinge
            gap = F.relu(worst + cfg.margin - nll_s)
            term = gap.mean()
            active = float((gap > 0).float().mean())
    held = anchor_term(normal, synthetic, anchor) if anchor is not None else None
    loss = normal_term + w * term + (w * held if held is not None else 0.0)
    return loss, {"loss": float(loss.detach()), "normal": float(normal_term.detach()),
                  "synthetic": float(term.detach()), "active": active, "novel": novel,
                  "anchor": float(held.detach()) if held is not None else 0.0, "weight": w}


def _mask_term(normal: FlowOutputs, synthetic: FlowOutputs, push: list[torch.Tensor], margin: float,
               covered: int) -> tuple[torch.Tensor, float]:
    """The hinge summed over the pushed positions and divided by the number of ``covered`` ones (so a gate
    only removes terms, it does not push the rest harder); the share of covered positions under the margin."""
    gaps, counted = [], 0
    for nll_n, pos_nll, where in zip(position_nll(normal), position_nll(synthetic), push):
        reference = nll_n.mean().detach()
        if where.any():
            gap = F.relu(reference + margin - pos_nll[where])
            gaps.append(gap)
            counted += int((gap > 0).sum())
    if not gaps:
        return synthetic[0][0].sum() * 0.0, 0.0
    return torch.cat(gaps).sum() / max(covered, 1), counted / max(covered, 1)
