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

``w = 0`` is plain FastFlow training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssnf.config import LossConfig

FlowOutputs = list[tuple[torch.Tensor, torch.Tensor]]  # per scale: (z [B, C, h, w], log_jac [B, h, w])


def nll_maps(outputs: FlowOutputs) -> list[torch.Tensor]:
    """Per scale, NLL per position summed over channels: ``[B, h, w]``."""
    return [0.5 * z.pow(2).sum(dim=1) - log_jac for z, log_jac in outputs]


def image_nll(outputs: FlowOutputs) -> torch.Tensor:
    """NLL per image and per feature dimension, over every scale: ``[B]``."""
    total = sum(m.sum(dim=(1, 2)) for m in nll_maps(outputs))
    dims = sum(z[0].numel() for z, _ in outputs)
    return total / dims


def ssnf_loss(normal: FlowOutputs, synthetic: FlowOutputs | None, synthetic_masks: torch.Tensor | None,
              cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss and its terms (``normal``, ``synthetic``, ``active``: share of synthetic images counted)."""
    nll_n = image_nll(normal)
    normal_term = nll_n.mean()
    if cfg.weight == 0 or synthetic is None:
        value = float(normal_term.detach())
        return normal_term, {"loss": value, "normal": value, "synthetic": 0.0, "active": 0.0}
    worst = nll_n.max().detach()
    if cfg.form == "mask":
        term, active = _mask_term(normal, synthetic, synthetic_masks, cfg.margin)
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
    loss = normal_term + cfg.weight * term
    return loss, {"loss": float(loss.detach()), "normal": float(normal_term.detach()),
                  "synthetic": float(term.detach()), "active": active}


def _mask_term(normal: FlowOutputs, synthetic: FlowOutputs, masks: torch.Tensor | None,
               margin: float) -> tuple[torch.Tensor, float]:
    if masks is None:
        raise ValueError("loss.form='mask' needs the synthetic masks")
    gaps, counted, total = [], 0, 0
    for (zn, jn), (zs, js) in zip(normal, synthetic):
        channels = zn.shape[1]
        reference = ((0.5 * zn.pow(2).sum(1) - jn) / channels).mean().detach()
        pos_nll = (0.5 * zs.pow(2).sum(1) - js) / channels
        covered = F.adaptive_avg_pool2d(masks.float(), pos_nll.shape[-2:])[:, 0] >= 0.5
        if covered.any():
            gap = F.relu(reference + margin - pos_nll[covered])
            gaps.append(gap)
            counted += int((gap > 0).sum())
        total += int(covered.sum())
    if not gaps:
        return synthetic[0][0].sum() * 0.0, 0.0
    return torch.cat(gaps).mean(), counted / max(total, 1)
