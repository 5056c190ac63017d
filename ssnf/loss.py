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
from ssnf.synthesis.positions import covered_positions

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
