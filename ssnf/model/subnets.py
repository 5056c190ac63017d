"""Coupling subnets: a 1x1 input projection, a stack of residual blocks, a 1x1 output projection.

Contract of a block: ``Block(width, spec)`` is an ``nn.Module`` mapping ``[B, width, H, W]`` to the same
shape *including* its residual connection. Blocks register by name with ``@register_block``; a stack
is spelled ``"conv,attn,attn"`` (one scale) or ``"conv,attn|conv|conv,conv"`` (one group per scale, the
"dynamic stacking" of the paper).

The output projection starts at zero, so every coupling starts as the identity (the flow then trains
from a well-conditioned point). Everything here pickles: FrEIA receives a ``SubnetFactory`` instance,
not a lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssnf.config import ModelConfig
from ssnf.errors import ConfigError
from ssnf.registry import Registry

BLOCKS: Registry[type[nn.Module]] = Registry("block")
register_block = BLOCKS.register


@dataclass(frozen=True)
class SubnetSpec:
    """Everything a subnet needs, for one scale. The defaults are ``ModelConfig``'s (spelled once, there)."""

    hidden: int = ModelConfig.hidden
    blocks: tuple[str, ...] = tuple(ModelConfig.blocks.split(","))  # one scale's stack
    heads: int = ModelConfig.heads
    dropout: float = ModelConfig.attn_dropout  # attention dropout
    kv_size: int = ModelConfig.attn_kv_size  # keys/values are pooled to at most kv_size x kv_size positions
    pos_encoding: bool = ModelConfig.pos_encoding  # add a 2-D sinusoidal encoding before attention

    @classmethod
    def from_config(cls, cfg: ModelConfig, blocks: tuple[str, ...], hidden: int | None = None) -> "SubnetSpec":
        """The spec of one scale of ``cfg`` whose stack is ``blocks`` (``parse_blocks``) and width ``hidden``
        (None: ``cfg.hidden``)."""
        return cls(hidden=cfg.hidden if hidden is None else hidden, blocks=tuple(blocks), heads=cfg.heads, dropout=cfg.attn_dropout,
                   kv_size=cfg.attn_kv_size, pos_encoding=cfg.pos_encoding)


def parse_blocks(spelling: str, n_scales: int) -> list[tuple[str, ...]]:
    """``"conv,attn"`` -> the same stack for every scale; ``"a|b|c"`` -> one stack per scale."""
    groups = [g.strip() for g in spelling.split("|")]
    if len(groups) not in (1, n_scales):
        raise ConfigError(
            f"model.blocks={spelling!r} has {len(groups)} scale groups but the backbone gives {n_scales} scales"
        )
    stacks = []
    for group in groups:
        names = tuple(n.strip() for n in group.split(",") if n.strip())
        if not names:
            raise ConfigError(f"model.blocks={spelling!r} has an empty stack: name at least one block")
        unknown = [n for n in names if n not in BLOCKS]
        if unknown:
            raise ConfigError(
                f"model.blocks: unknown block {unknown[0]!r}; known blocks: {', '.join(sorted(BLOCKS))}"
            )
        stacks.append(names)
    return stacks * n_scales if len(stacks) == 1 else stacks


@register_block("conv")
class ConvBlock(nn.Module):
    """Residual 3x3 convolution: ``x + conv3x3(relu(x))``."""

    def __init__(self, width: int, spec: SubnetSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.relu(x))


@register_block("dwconv")
class DepthwiseSeparableBlock(nn.Module):
    """Residual depthwise-separable 3x3 convolution: ``x + conv1x1(dwconv3x3(relu(x)))``: the 3x3 block's
    receptive field at about 1/8 of its multiply-adds at width 128 (MobileNet's factorisation)."""

    def __init__(self, width: int, spec: SubnetSpec) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.depthwise(F.relu(x)))


@register_block("conv1")
class PointwiseBlock(nn.Module):
    """Residual 1x1 convolution: ``x + conv1x1(relu(x))``."""

    def __init__(self, width: int, spec: SubnetSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.relu(x))


def sinusoidal_2d(channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine/cosine encoding ``[channels, height, width]``: half the channels encode rows, half columns."""
    quarter = max(channels // 4, 1)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs[None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs[None]
    pe = torch.zeros(channels, height, width, device=device)
    rows = torch.cat([ys.sin(), ys.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    cols = torch.cat([xs.sin(), xs.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    both = torch.cat([rows, cols], dim=0)[:channels]
    pe[: both.shape[0]] = both
    return pe.to(dtype or torch.float32)


@register_block("attn")
class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over positions: ``x + proj(attn(norm(x + pe)))``.

    Queries come from every position; keys and values from the map average-pooled to at most
    ``kv_size x kv_size`` positions (spatial-reduction attention), which keeps a 64x64 map affordable.
    """

    def __init__(self, width: int, spec: SubnetSpec) -> None:
        super().__init__()
        if width % spec.heads:
            raise ConfigError(f"model.heads={spec.heads} does not divide model.hidden={width}")
        self.heads = spec.heads
        self.kv_size = spec.kv_size
        self.pos_encoding = spec.pos_encoding
        self.dropout = spec.dropout
        self.norm = nn.GroupNorm(1, width)
        self.q = nn.Conv2d(width, width, 1)
        self.kv = nn.Conv2d(width, 2 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x
        if self.pos_encoding:
            y = y + sinusoidal_2d(c, h, w, x.device, x.dtype)
        y = self.norm(y)
        src = y
        if h > self.kv_size or w > self.kv_size:
            src = F.adaptive_avg_pool2d(y, (min(h, self.kv_size), min(w, self.kv_size)))
        d = c // self.heads
        # [B, positions, heads, d] -> [B, heads, positions, d], contiguous: SDPA's fused CPU kernel needs it
        # (strided views fall back to the unfused math path: 2.5x slower forward and backward at the stride-8
        # shape, batch 32; docs/benchmarks.md)
        q = self.q(y).flatten(2).transpose(1, 2).reshape(b, h * w, self.heads, d).transpose(1, 2).contiguous()
        kv = self.kv(src).flatten(2).transpose(1, 2)
        k, v = (t.contiguous() for t in kv.reshape(b, kv.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(out)


class CouplingSubnet(nn.Module):
    """``c_in -> hidden`` (1x1), residual blocks, ReLU, ``hidden -> c_out`` (1x1, zero-initialised)."""

    precision: str = "fp32"  # set by ``SSNFModel.set_precision``: bf16 runs the subnet under autocast

    def __init__(self, c_in: int, c_out: int, spec: SubnetSpec) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, spec.hidden, 1)
        self.blocks = nn.Sequential(*(BLOCKS[name](spec.hidden, spec) for name in spec.blocks))
        self.out = nn.Conv2d(spec.hidden, c_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: the layout oneDNN's convolutions are fastest in, exact in float32
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.out(F.relu(self.blocks(self.inp(x))))
        # the coupling arithmetic, its log-determinant and the loss stay float32
        return y.float().contiguous()


@dataclass(frozen=True)
class SubnetFactory:
    """FrEIA's ``subnet_constructor(c_in, c_out)``, as a picklable object."""

    spec: SubnetSpec

    def __call__(self, c_in: int, c_out: int) -> CouplingSubnet:
        return CouplingSubnet(c_in, c_out, self.spec)
