"""Global max pooling; weights: the fraction of channels whose maximum sits at each position."""
from __future__ import annotations

import torch
from torch import Tensor

from gspdml.pooling.base import POOLINGS, Pooling, masked_max

__all__ = ["GMP", "argmax_fraction"]


def argmax_fraction(argmax: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(B, C) argmax positions -> (B, n) fraction of channels peaking at each position."""
    b, c = argmax.shape
    counts = torch.zeros(b, n, dtype=dtype, device=argmax.device)
    counts.scatter_add_(1, argmax, torch.ones(b, c, dtype=dtype, device=argmax.device))
    return counts / c


@POOLINGS.register("gmp")
class GMP(Pooling):
    """Global max pooling. Weights: fraction of channels whose maximum sits at each position."""

    name = "gmp"

    def pool(self, feats, mask):
        pooled, argmax = masked_max(feats, mask)
        return pooled, argmax_fraction(argmax, feats.shape[1], feats.dtype), None
