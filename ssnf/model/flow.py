"""One normalizing flow per feature scale, built from FrEIA's ``AllInOneBlock``.

Contract of a flow piece here: ``forward(x) -> (z, log_jac)`` where ``log_jac`` is the log-determinant
*per position*, ``[B, H, W]``; its sum over ``H, W`` is FrEIA's per-sample log-determinant. Positions
matter because the mask-aware loss and the NLL anomaly map need them.

With ``position``, every coupling also receives a fixed 2-D sinusoidal encoding of the position as a
condition (FrEIA's ``dims_c``), so the density may differ between places of an aligned part (a
highlight that is normal in the middle of a tyre need not be rare there).

Anything in front of the couplings is either fixed or has its log-determinant counted (``norm``):
``none``; ``fixed`` (per-channel standardisation with statistics of the training features, frozen);
``actnorm`` (a learned per-channel affine initialised the same way, log-determinant counted). A
trainable transform whose Jacobian is not counted (FastFlow's LayerNorm) lets the loss fall without
end by shrinking its inputs; ssnf has none.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from FrEIA.modules import AllInOneBlock
from torch import nn

from ssnf.config import NORMS
from ssnf.errors import ConfigError
from ssnf.model.subnets import SubnetFactory, SubnetSpec, sinusoidal_2d


def _scaled_softplus(a: torch.Tensor) -> torch.Tensor:
    """FrEIA's SOFTPLUS global-scale activation, as a module-level function (FrEIA's is a lambda)."""
    return 0.1 * F.softplus(a, beta=0.5)


class CouplingBlock(AllInOneBlock):
    """``AllInOneBlock`` that pickles and reports its log-determinant per position."""

    def __init__(self, channels: int, subnet: SubnetFactory, clamp: float, permute_soft: bool,
                 condition_channels: int = 0) -> None:
        dims_c = [(condition_channels, 1, 1)] if condition_channels else []
        super().__init__([(channels, 1, 1)], dims_c=dims_c, subnet_constructor=subnet, affine_clamping=clamp,
                         permute_soft=permute_soft, global_affine_type="SOFTPLUS")
        del self.softplus  # replaced by the picklable function below (same values)
        self.global_scale_activation = _scaled_softplus
        self._position_jac: torch.Tensor | None = None

    def _affine(self, x, a, rev=False):
        a = a * 0.1  # FrEIA scales the subnet output down by ten for stability
        ch = x.shape[1]
        sub_jac = self.clamp * torch.tanh(a[:, :ch])
        if self.GIN:
            sub_jac = sub_jac - torch.mean(sub_jac, dim=self.sum_dims, keepdim=True)
        self._position_jac = sub_jac.sum(dim=1) * (-1.0 if rev else 1.0)
        if not rev:
            return x * torch.exp(sub_jac) + a[:, ch:], torch.sum(sub_jac, dim=self.sum_dims)
        return (x - a[:, ch:]) * torch.exp(-sub_jac), -torch.sum(sub_jac, dim=self.sum_dims)

    def forward(self, x, c=[], rev=False, jac=True):
        (out,), _ = super().forward(x, c, rev, jac)
        position = self._position_jac
        self._position_jac = None
        global_jac = torch.sum(torch.log(self.global_scale_activation(self.global_scale)))
        return (out,), position + (-1.0 if rev else 1.0) * global_jac


class ChannelNorm(nn.Module):
    """Per-channel affine in front of the couplings; ``fixed`` or ``actnorm``, log-determinant counted."""

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("initialised", torch.tensor(False))
        if mode == "actnorm":
            self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        else:
            self.register_buffer("shift", torch.zeros(1, channels, 1, 1))
            self.register_buffer("log_scale", torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the affine from training features ``[N, C, H, W]`` so that they come out standardised."""
        mean = features.mean(dim=(0, 2, 3), keepdim=True)
        std = features.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.shift.copy_(-mean / std)
        self.log_scale.copy_(-std.log())
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x * self.log_scale.exp() + self.shift
        log_jac = self.log_scale.sum().expand(x.shape[0], x.shape[2], x.shape[3])
        return z, log_jac


class ScaleFlow(nn.Module):
    """Optional channel norm, then ``couplings`` coupling blocks, over one feature scale."""

    def __init__(self, channels: int, spec: SubnetSpec, couplings: int, clamp: float,
                 permute_soft: bool, norm: str, pos_channels: int = 0) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"model.norm={norm!r} is not one of {', '.join(NORMS)}")
        if channels < 2:
            raise ConfigError(f"a coupling flow needs at least 2 feature channels, got {channels}")
        self.norm = ChannelNorm(channels, norm) if norm != "none" else None
        self.pos_channels = pos_channels
        factory = SubnetFactory(spec)
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, factory, clamp, permute_soft, pos_channels) for _ in range(couplings)
        )

    def _conditions(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.pos_channels:
            return []
        b, _, h, w = x.shape
        return [sinusoidal_2d(self.pos_channels, h, w, x.device, x.dtype).expand(b, -1, -1, -1)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_jac = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])
        if self.norm is not None:
            x, j = self.norm(x)
            log_jac = log_jac + j
        c = self._conditions(x)
        for block in self.blocks:
            (x,), j = block((x,), c=c)
            log_jac = log_jac + j
        return x, log_jac

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        c = self._conditions(z)
        for block in reversed(self.blocks):
            (z,), _ = block((z,), c=c, rev=True)
        if self.norm is not None:
            z = (z - self.norm.shift) * (-self.norm.log_scale).exp()
        return z


def seed_permutations(seed: int) -> None:
    """FrEIA draws each block's channel permutation from numpy's global generator: seed it first."""
    np.random.seed(seed % (2**32))
