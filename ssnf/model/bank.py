"""A memory bank of training patch features: PatchCore's nearest-neighbour score on the flows' own features.

``patch_features`` turns the backbone's per-scale features into one patch feature per position of the finest
scale (each scale averaged over a ``neighbourhood`` window, zero padding counted as in anomalib's PatchCore, the
coarser scales upsampled bilinearly onto the finest grid, concatenated: PatchCore's locally aware patch
features). ``build_bank`` keeps a coreset of the
training images' patch features: greedy k-centre selection (PatchCore's) in a random projection of
``bank.projection`` dimensions, ``bank.coreset`` of the positions and at most ``bank.max_entries``.
``MemoryBank(features)`` is the ``knn`` position map: each position's Euclidean distance to its nearest entry,
computed in float32 in chunks of entries (bounded memory, and a static graph for export).

The bank also keeps the standardisation of the fused maps (``fusion``: mean and standard deviation of the
flows' ``nll`` map and of the ``knn`` map over the validation normals' pixels), set on validation
(``ssnf.validation``) and used by ``ssnf.scoring``. Where the bank is built is the caller's: once per extractor
setting (``ssnf.prepared.prepare_bank``), shared by every model of that setting.
"""

from __future__ import annotations

import math
import resource

import torch
import torch.nn.functional as F
from torch import nn

from ssnf.config import BankConfig
from ssnf.errors import ConfigError

CHUNK = 2048  # bank entries per distance chunk: [B * positions, CHUNK] floats at a time


def patch_features(features: list[torch.Tensor], neighbourhood: int) -> torch.Tensor:
    """``[B, sum C, h, w]`` (the finest scale's grid) from per-scale features ``[B, C_s, h_s, w_s]``."""
    pad = neighbourhood // 2
    out = []
    h, w = features[0].shape[-2:]
    for f in features:
        f = f.float()
        if neighbourhood > 1:
            # PatchCore's pooling (anomalib: AvgPool2d(3, 1, 1)): the zero padding counts, so a border position's
            # patch feature is damped as the reference implementation damps it
            f = F.avg_pool2d(f, neighbourhood, stride=1, padding=pad)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)


class MemoryBank(nn.Module):
    """``features -> [B, h, w]``: each position's distance to its nearest bank entry (the ``knn`` map)."""

    def __init__(self, entries: torch.Tensor, neighbourhood: int) -> None:
        super().__init__()
        entries = entries.float().contiguous()
        self.neighbourhood = int(neighbourhood)
        self.register_buffer("entries", entries)
        self.register_buffer("sq", entries.pow(2).sum(dim=1))
        # mean / std of the nll map and of the knn map over validation normal pixels (set on validation)
        self.register_buffer("fusion", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    @property
    def size(self) -> int:
        return int(self.entries.shape[0])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = patch_features(features, self.neighbourhood)
        b, d, h, w = x.shape
        q = x.permute(0, 2, 3, 1).reshape(b * h * w, d)
        qq = q.pow(2).sum(dim=1, keepdim=True)
        nearest = None
        for start in range(0, self.size, CHUNK):  # a fixed number of chunks: the exported graph unrolls them
            e = self.entries[start:start + CHUNK]
            d2 = torch.addmm(qq + self.sq[start:start + CHUNK][None], q, e.t(), alpha=-2.0).amin(dim=1)
            nearest = d2 if nearest is None else torch.minimum(nearest, d2)
        assert nearest is not None
        return nearest.clamp_min(0.0).sqrt().reshape(b, h, w)

    def state(self) -> dict:
        """What a checkpoint keeps."""
        return {"entries": self.entries.cpu(), "fusion": self.fusion.cpu(), "neighbourhood": self.neighbourhood}

    @classmethod
    def from_state(cls, state: dict) -> "MemoryBank":
        bank = cls(state["entries"], int(state["neighbourhood"]))
        bank.fusion.copy_(state["fusion"])
        return bank


def memory_available() -> int | None:
    """Bytes this process may still allocate: its data-segment limit (a sweep trial's memory share) when one is
    set, else the memory the system reports available (None where neither can be read)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY:
        try:
            fields = open("/proc/self/status").read().split("VmData:")[1].split()
            used = int(fields[0]) * 1024
        except (OSError, IndexError, ValueError):
            used = 0
        return max(0, soft - used)
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bank_bytes(positions: int, dims: int, cfg: BankConfig) -> int:
    """Memory building a bank of ``positions`` patch features of ``dims`` needs, at its peak (float32): the patch
    features, their projection and the distances of the greedy selection."""
    proj = cfg.projection if 0 < cfg.projection < dims else dims
    return 4 * positions * (dims + proj + 2)


def coreset_size(positions: int, cfg: BankConfig) -> int:
    return max(1, min(cfg.max_entries, int(math.ceil(cfg.coreset * positions))))


@torch.no_grad()
def greedy_coreset(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``k`` of ``points`` ``[N, D]`` chosen by greedy k-centre (each next point the farthest from
    those chosen), starting from a seeded random point. One matrix-vector product an entry, buffers reused."""
    n = len(points)
    if k >= n:
        return torch.arange(n)
    points = points.float().contiguous()
    g = torch.Generator().manual_seed(seed)
    chosen = torch.empty(k, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=g))
    sq = points.pow(2).sum(dim=1)
    nearest = torch.full((n,), float("inf"))
    dist = torch.empty(n)
    for i in range(k):
        chosen[i] = idx
        torch.add(sq, torch.mv(points, points[idx]), alpha=-2.0, out=dist)  # |x|^2 - 2 x.c (+ |c|^2: constant)
        dist += sq[idx]
        torch.minimum(nearest, dist, out=nearest)
        idx = int(torch.argmax(nearest))
    return chosen


def build_bank(features: list[torch.Tensor], cfg: BankConfig, seed: int = 0,
               memory_limit: int | None = None) -> MemoryBank:
    """A ``MemoryBank`` of the training images' per-scale ``features`` (``[N, C_s, h_s, w_s]``); ``memory_limit``:
    bytes it may use (refused in one line, with what it needs, beyond that)."""
    n, _, h, w = features[0].shape
    dims = sum(int(f.shape[1]) for f in features)
    positions = n * h * w
    need = bank_bytes(positions, dims, cfg)
    if memory_limit is not None and need > memory_limit:
        raise ConfigError(f"the memory bank needs {need / 2**30:.2f} GiB to build ({positions} positions x {dims} "
                          f"features) and {memory_limit / 2**30:.2f} GiB are available: lower data.image_size, use "
                          "fewer backbone.strides or set bank.enabled=false")
    chunks = []
    for start in range(0, n, 32):
        x = patch_features([f[start:start + 32] for f in features], cfg.neighbourhood)
        chunks.append(x.permute(0, 2, 3, 1).reshape(-1, dims))
    patches = torch.cat(chunks)
    k = coreset_size(positions, cfg)
    points = patches
    if 0 < cfg.projection < dims:  # a Gaussian random projection keeps distances (Johnson-Lindenstrauss)
        g = torch.Generator().manual_seed(seed + 1)
        points = patches @ (torch.randn(dims, cfg.projection, generator=g) / math.sqrt(cfg.projection))
    chosen = greedy_coreset(points, k, seed)
    return MemoryBank(patches[chosen].clone(), cfg.neighbourhood)
