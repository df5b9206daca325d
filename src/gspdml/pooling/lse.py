"""Log-sum-exp pooling; weights: each position's share of ``sum_j exp(r x_jc)``, averaged over channels."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, real_count

__all__ = ["LSEPooling"]


@POOLINGS.register("lse")
class LSEPooling(Pooling):
    """Log-sum-exp pooling ``(1/r) log mean_j exp(r x_j)`` with learnable sharpness ``r > 0``.

    ``r -> 0`` gives GAP and ``r -> inf`` gives GMP. ``r`` is stored as ``log r`` so it stays positive.
    """

    name = "lse"

    def __init__(self, dim: int, r: float = 5.0, learn_r: bool = True) -> None:
        super().__init__(dim)
        if r <= 0:
            raise InputError(f"lse pooling: r must be > 0, got {r}")
        self.log_r = nn.Parameter(torch.tensor(float(r)).log(), requires_grad=learn_r)

    @property
    def r(self) -> Tensor:
        return self.log_r.exp()

    def pool(self, feats, mask):
        r = self.r.to(feats.dtype)
        scaled = r * feats
        if mask is not None:
            scaled = scaled.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        lse = torch.logsumexp(scaled, dim=1)
        pooled = (lse - real_count(feats, mask).log()) / r
        shares = torch.softmax(scaled, dim=1).mean(dim=2)
        return pooled, shares, None
