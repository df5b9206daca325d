"""Generalised mean (GeM) pooling; weights: each position's share of ``sum_j x_jc^p``, averaged over channels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, masked_mean

__all__ = ["GeM", "generalized_mean", "channel_shares", "learnable_exponent"]


def learnable_exponent(p: float, learn_p: bool, where: str, shape: tuple[int, ...] = ()) -> nn.Parameter:
    """GeM's exponent ``p > 0`` as a parameter of ``shape`` (a scalar by default; ``(C,)`` for one
    exponent per channel), trained when ``learn_p``."""
    if not p > 0:
        raise InputError(f"{where}: p must be > 0, got {p}")
    return nn.Parameter(torch.full(shape, float(p)), requires_grad=learn_p)


def channel_shares(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    """(B, n, C) non-negative scores -> (B, n) per-channel shares averaged over channels."""
    if mask is not None:
        scores = scores * mask.unsqueeze(-1).to(scores.dtype)
    shares = scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return shares.mean(dim=2)


def generalized_mean(feats: Tensor, mask: Optional[Tensor], p: Tensor, clamp_eps: float) -> tuple[Tensor, Tensor]:
    """GeM of (B, n, C) features over the real positions: ``(pooled (B, C), weights (B, n))``."""
    powered = feats.clamp(min=clamp_eps).pow(p)
    pooled = masked_mean(powered, mask).pow(1.0 / p)
    return pooled, channel_shares(powered, mask)


@POOLINGS.register("gem")
class GeM(Pooling):
    """Generalised mean pooling (Radenović et al.): ``(mean_j max(x_j, eps)^p)^(1/p)``.

    ``p`` is learnable (``learn_p=True``) and starts at 3; ``p = 1`` is GAP on non-negative
    inputs, ``p -> inf`` approaches GMP. Inputs are clamped at ``clamp_eps`` (GeM is defined on
    non-negative features).
    """

    name = "gem"

    def __init__(self, dim: int, p: float = 3.0, clamp_eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__(dim)
        self.p = learnable_exponent(p, learn_p, self.where)
        if clamp_eps <= 0:
            raise InputError(f"gem pooling: clamp_eps must be > 0, got {clamp_eps}")
        self.clamp_eps = clamp_eps

    def pool(self, feats, mask):
        pooled, weights = generalized_mean(feats, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p={float(self.p):.3f}, clamp_eps={self.clamp_eps}"
