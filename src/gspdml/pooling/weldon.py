"""WELDON (Durand et al. 2016): per channel, mean of the k highest plus mean of the k lowest scores."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling

__all__ = ["Weldon", "extreme_mean"]


def extreme_mean(feats: Tensor, mask: Optional[Tensor], k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Per channel, the mean of the ``k`` largest (or smallest) real values of (B, n, C) features.

    A sample with fewer than ``k`` real positions averages all of them. Returns ``(means (B, C),
    share (B, n))``: ``share[b, j]`` is the fraction of the total selection weight (over channels)
    that falls on position ``j``; it sums to one.
    """
    b, n, c = feats.shape
    k = min(k, n)
    fill = float("-inf") if largest else float("inf")
    values = feats if mask is None else feats.masked_fill(~mask.unsqueeze(-1), fill)
    top, idx = torch.topk(values, k, dim=1, largest=largest)  # (B, k, C)
    rank = torch.arange(k, device=feats.device).view(1, k, 1)
    if mask is None:
        keep = torch.ones_like(top, dtype=torch.bool)
        count = feats.new_full((b, 1), float(k))
    else:
        real = mask.sum(dim=1).view(b, 1, 1)
        keep = (rank < real).expand_as(top)
        count = real.view(b, 1).clamp(max=k).to(feats.dtype)
    sel = torch.where(keep, top, torch.zeros_like(top))
    means = sel.sum(dim=1) / count
    contrib = keep.to(feats.dtype) / count.unsqueeze(-1)  # (B, k, C), each channel sums to one
    share = torch.zeros(b, n, c, dtype=feats.dtype, device=feats.device).scatter_add_(1, idx, contrib)
    return means, share.sum(dim=2) / c


@POOLINGS.register("weldon")
class Weldon(Pooling):
    """WELDON pooling: ``s_c = mean(top-k_max of x_.c) + mean(bottom-k_min of x_.c)`` over real positions.

    The scores are the (already projected) features, one score map per channel; the output has
    ``dim`` channels. ``k_max = k_min = 3`` are the authors' TF defaults (their layer sums where
    the WELDON paper averages; here the paper's means). Weights: each position's share of the
    selections (half from the top-k, half from the bottom-k), averaged over channels.
    """

    name = "weldon"

    def __init__(self, dim: int, k_max: int = 3, k_min: int = 3) -> None:
        super().__init__(dim)
        for key, value in (("k_max", k_max), ("k_min", k_min)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"weldon pooling: {key} must be a positive integer, got {value!r}")
        self.k_max, self.k_min = k_max, k_min

    def pool(self, feats, mask):
        high, w_high = extreme_mean(feats, mask, self.k_max, largest=True)
        low, w_low = extreme_mean(feats, mask, self.k_min, largest=False)
        return high + low, (w_high + w_low) / 2, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k_max={self.k_max}, k_min={self.k_min}"
