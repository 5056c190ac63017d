"""From flow outputs to anomaly maps and image scores.

Per scale, a map over positions (``scoring.map``):
- ``density`` (the paper): ``-mean_c exp(-z_c^2 / 2)``, the negated mean per-channel likelihood;
- ``fastflow``: ``-exp(-mean_c z_c^2 / 2)``;
- ``z2``: ``mean_c z_c^2 / 2``;
- ``nll``: the full NLL per dimension at that position, Jacobian included.
With a memory bank (``bank.enabled``, ``ssnf.model.bank``), per position of the finest scale:
- ``knn``: the distance of the position's patch feature to its nearest training patch (PatchCore's score);
- ``fused25`` / ``fused50`` / ``fused75``: ``w * (nll - mean) / std + (1 - w) * (knn - mean) / std`` with
  ``w`` = 0.25 / 0.5 / 0.75 and each map standardised over the validation normals' pixels (``fusion_stats``,
  kept in the bank), at the input size.
Maps are upsampled (bilinear) to the input size, averaged over scales, optionally smoothed with a
Gaussian; the image score is the maximum or the mean of the top ``topk`` share of a map, possibly of
another kind than the pixel map (``scoring.image_map``). A map is computed from ``Sources``: the flows'
outputs and / or the bank's distances, whichever the kinds need (``needs``).

``auto`` settings are chosen on validation by ``choose``: every candidate map is computed once from the
same flow outputs. The pixel map starts as ``nll`` (the flow's own likelihood, the only map that keeps the
log-determinant); another kind replaces it only when it has the better validation pixel AUROC *and* wins in
at least ``scoring.switch_confidence`` of paired bootstrap resamples of the validation images. A small
validation set ranks maps within its own noise, and without this rule a lead of 0.005 on synthetic defects
swapped tire's map for one that lost 0.13 pixel AUROC on real ones (docs/benchmarks.md). The image score is
the (kind, reducer) with the best validation image AUROC, ties to the earlier: no image score has a claim
to be the prior (validation ranks the maximum of ``nll`` last in every run measured).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssnf.config import AUTO, BANK_KINDS, FLOW_KINDS, FUSED_WEIGHTS, IMAGE_SCORES, MAP_KINDS, ScoringConfig
from ssnf.errors import ConfigError
from ssnf.loss import FlowOutputs
from ssnf.metrics import image_auroc, pixel_auroc


PRIOR_MAP = "nll"  # the pixel map kept unless validation is confidently better with another
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 20230618  # a fixed stream of its own: choosing draws nothing from training's streams


@dataclass
class Sources:
    """What maps are computed from: the flows' outputs, the bank's ``knn`` distances ``[B, h, w]`` and the fused
    maps' standardisation ``fusion`` (``[4]``: nll mean, std, knn mean, std); None where not needed."""

    outputs: FlowOutputs | None = None
    knn: torch.Tensor | None = None
    fusion: torch.Tensor | None = None


def needs(kinds) -> tuple[bool, bool]:
    """Whether maps of ``kinds`` need the flows, and whether they need the bank."""
    kinds = set(kinds)
    return bool(kinds & {*FLOW_KINDS, *FUSED_WEIGHTS}), bool(kinds & set(BANK_KINDS))


def fusion_stats(nll: torch.Tensor, knn: torch.Tensor) -> torch.Tensor:
    """``[4]``: mean and standard deviation of the ``nll`` and of the ``knn`` maps' pixels (validation normals)."""
    stats = []
    for m in (nll, knn):
        m = m.double()
        stats += [float(m.mean()), max(float(m.std()), 1e-8)]
    return torch.tensor(stats, dtype=torch.float32)


def fuse(nll: torch.Tensor, knn: torch.Tensor, stats: torch.Tensor, weight: float) -> torch.Tensor:
    """The fused map: ``weight`` of the standardised ``nll`` map plus the rest of the standardised ``knn`` map."""
    return weight * (nll - stats[0]) / stats[1] + (1.0 - weight) * (knn - stats[2]) / stats[3]


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
    """Separable Gaussian smoothing of ``[B, H, W]`` with reflected borders (``F.pad``'s ``reflect``: the edge
    pixel is not repeated). Each pass is one matrix product with the kernel and the reflection folded into
    a banded ``[n, n]`` matrix: the same sums as a padded convolution, 10-20x faster than a one-channel
    ``conv2d`` on a CPU."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h, w = maps.shape[-2:]
    return _blur_matrix(h, kernel, radius) @ maps @ _blur_matrix(w, kernel, radius).T


def _blur_matrix(n: int, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """``[n, n]``: row ``i`` holds the weight of each input position in output ``i`` (reflected at both ends)."""
    if radius >= n:
        raise ValueError(f"a Gaussian of radius {radius} needs maps larger than {n} pixels (scoring.smooth_sigma)")
    source = (torch.arange(n, device=kernel.device)[:, None] + torch.arange(-radius, radius + 1, device=kernel.device)).abs()
    source = torch.where(source > n - 1, 2 * (n - 1) - source, source)
    return torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device).scatter_add_(1, source, kernel.expand(n, -1))


def anomaly_maps(sources: Sources | FlowOutputs, cfg: ScoringConfig, size: tuple[int, int],
                 kind: str | None = None) -> torch.Tensor:
    """``[B, H, W]`` anomaly maps of ``kind`` (default: ``cfg.map``) at the input size, from ``sources`` (or the
    flows' outputs alone)."""
    src = sources if isinstance(sources, Sources) else Sources(sources)
    kind = kind or cfg.map
    if kind not in MAP_KINDS:
        raise ConfigError(f"scoring.map={kind!r} must be resolved to one of {', '.join(MAP_KINDS)} before scoring")
    if kind in FUSED_WEIGHTS:
        if src.fusion is None:
            raise ConfigError(f"scoring map {kind!r} needs the bank's fusion statistics (set on validation)")
        return fuse(anomaly_maps(src, cfg, size, "nll"), anomaly_maps(src, cfg, size, "knn"), src.fusion,
                    FUSED_WEIGHTS[kind])
    if kind == "knn":
        if src.knn is None:
            raise ConfigError("scoring map 'knn' needs the memory bank: this model has none (bank.enabled)")
        positions = [src.knn]
    else:
        if src.outputs is None:
            raise ConfigError(f"scoring map {kind!r} needs the flows' outputs")
        positions = position_maps(src.outputs, kind)
    per_scale = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in positions]
    maps = torch.stack(per_scale).mean(dim=0)
    if cfg.smooth_sigma > 0:
        maps = gaussian_blur(maps, cfg.smooth_sigma)
    return maps


def image_scores(maps: torch.Tensor, cfg: ScoringConfig, reducer: str | None = None) -> torch.Tensor:
    reducer = reducer or cfg.image_score
    flat = maps.flatten(1)
    if reducer == "max":
        return flat.max(dim=1).values
    if reducer != "topk":
        raise ConfigError(f"scoring.image_score={reducer!r} must be resolved to max or topk before scoring")
    k = max(1, int(round(cfg.topk * int(flat.shape[1]))))  # int(): a constant when traced (the map size is fixed)
    return flat.topk(k, dim=1).values.mean(dim=1)


def image_map_kind(cfg: ScoringConfig) -> str:
    return cfg.map if cfg.image_map == "pixel" else cfg.image_map


def resolve(cfg: ScoringConfig, chosen: ScoringConfig | None) -> ScoringConfig:
    """``cfg`` with every ``auto`` replaced by ``chosen`` (a model's validated choice)."""
    if cfg.resolved:
        return cfg
    if chosen is None:
        raise ConfigError(
            "scoring has 'auto' settings but this model was never validated (they are chosen on validation "
            "during training): train it with ssnf's train, or set scoring.map, scoring.image_map and "
            "scoring.image_score")
    return dataclasses.replace(
        cfg,
        map=chosen.map if cfg.map == AUTO else cfg.map,
        image_map=image_map_kind(chosen) if cfg.image_map == AUTO else cfg.image_map,
        image_score=chosen.image_score if cfg.image_score == AUTO else cfg.image_score,
    )


def score(sources: Sources | FlowOutputs, cfg: ScoringConfig,
          size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel maps ``[B, H, W]`` and image scores ``[B]`` under a resolved ``cfg``."""
    maps = anomaly_maps(sources, cfg, size)
    kind = image_map_kind(cfg)
    source = maps if kind == cfg.map else anomaly_maps(sources, cfg, size, kind)
    return maps, image_scores(source, cfg)


def resolved_kinds(cfg: ScoringConfig) -> tuple[str, str]:
    """The pixel map's kind and the image score's map kind of a resolved ``cfg``."""
    return cfg.map, image_map_kind(cfg)


def candidates(cfg: ScoringConfig, bank: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """The pixel map kinds and the (image map kind, reducer) pairs that ``cfg`` leaves open, prior first;
    ``bank``: the model has a memory bank (its kinds are candidates too).

    An image pair's kind is ``"pixel"`` when it follows whatever pixel map is chosen."""
    open_kinds = MAP_KINDS if bank else FLOW_KINDS
    pixel = [PRIOR_MAP, *(k for k in open_kinds if k != PRIOR_MAP)] if cfg.map == AUTO else [cfg.map]
    if cfg.image_map == AUTO:
        kinds = list(open_kinds)
    elif cfg.image_map == "pixel":
        kinds = ["pixel"]
    else:
        kinds = [cfg.image_map]
    reducers = list(IMAGE_SCORES) if cfg.image_score == AUTO else [cfg.image_score]
    return pixel, [(k, r) for k in kinds for r in reducers]


def _bootstrap_weights(labels: np.ndarray, rounds: int) -> np.ndarray:
    """``[rounds, N]`` resampling counts of the validation images, normals and anomalies resampled apart
    (every round keeps both), from a fixed stream: the same choice on every call."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    weights = np.zeros((rounds, len(labels)))
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        if len(idx):
            weights[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=rounds)
    return weights


def _histogram_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from per-bin counts ``[..., bins]`` of positives and negatives (ties within a bin count half)."""
    below = np.cumsum(neg, axis=-1) - neg
    num = (pos * (below + 0.5 * neg)).sum(-1)
    den = pos.sum(-1) * neg.sum(-1)
    return np.divide(num, den, out=np.full(num.shape, 0.5), where=den > 0)


def bootstrap_pixel_auroc(maps: torch.Tensor, masks: np.ndarray, weights: np.ndarray,
                          bins: int = 2048) -> np.ndarray:
    """Pixel AUROC ``[rounds]`` of ``maps`` (``[N, H, W]``) under each row of image resampling counts.

    Each image's pixels are counted into ``bins`` quantile bins of all the maps' values (positives and
    negatives apart), so a round costs ``O(N * bins)`` instead of a sort of every pixel."""
    values = maps.reshape(len(maps), -1).double().numpy()
    truth = masks.reshape(len(masks), -1)
    edges = np.quantile(values[:, ::max(1, values.shape[1] // 4096)], np.linspace(0, 1, bins + 1)[1:-1])
    idx = np.searchsorted(edges, values) + bins * np.arange(len(values))[:, None]
    pos = np.bincount(idx[truth], minlength=bins * len(values)).reshape(len(values), bins)
    neg = np.bincount(idx[~truth], minlength=bins * len(values)).reshape(len(values), bins)
    return _histogram_auroc(weights @ pos, weights @ neg)


def _pixel_map(pix: dict[str, float], maps: dict[str, torch.Tensor], masks: np.ndarray, labels: np.ndarray,
               confidence: float) -> tuple[str, float]:
    """The kind with the best validation pixel AUROC if it beats the prior (``pix``'s first kind) in at least
    ``confidence`` of the bootstrap rounds, else the prior; with the share of rounds it won (1.0 when the
    prior is the best). The bootstrap runs only when there is a switch to decide."""
    prior = next(iter(pix))
    best = max(pix, key=lambda k: pix[k])  # max keeps the first of equals: the prior
    if best == prior or confidence == 0:
        return best, 1.0
    weights = _bootstrap_weights(labels, BOOTSTRAP_ROUNDS)
    won = float((bootstrap_pixel_auroc(maps[best], masks, weights)
                 > bootstrap_pixel_auroc(maps[prior], masks, weights)).mean())
    return (best, won) if won >= confidence else (prior, won)


def choose(maps: dict[str, torch.Tensor], labels: np.ndarray, masks: np.ndarray,
           cfg: ScoringConfig, bank: bool = False) -> tuple[ScoringConfig, dict]:
    """Resolve ``cfg``'s ``auto`` settings on validation maps (``maps[kind]``: ``[N, H, W]``).

    Returns the resolved config and the metrics: ``val_pixel_auroc`` / ``val_image_auroc`` of the chosen
    settings, under ``candidates`` those of every candidate, and under ``switch`` the share of bootstrap
    rounds in which the best pixel map beat the prior (1.0 when the prior is the best)."""
    labels = np.asarray(labels)
    pixel_kinds, image_pairs = candidates(cfg, bank)
    pix = {k: pixel_auroc(masks, maps[k].numpy()) for k in pixel_kinds}
    best_pixel, pixel_won = _pixel_map(pix, maps, masks, labels, cfg.switch_confidence)
    img = {}
    for kind, reducer in image_pairs:
        source = best_pixel if kind == "pixel" else kind
        img[f"{kind}/{reducer}"] = image_auroc(labels, image_scores(maps[source], cfg, reducer).numpy())
    best_image = max(img, key=lambda k: img[k])  # max keeps the first of equals
    kind, reducer = best_image.split("/")
    chosen = dataclasses.replace(cfg, map=best_pixel, image_map=kind, image_score=reducer)
    metrics = {"val_pixel_auroc": pix[best_pixel], "val_image_auroc": img[best_image],
               "candidates": {**{f"pixel/{k}": v for k, v in pix.items()},
                              **{f"image/{k}": v for k, v in img.items()}},
               "switch": pixel_won}
    return chosen, metrics
