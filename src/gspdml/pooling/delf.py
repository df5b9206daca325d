"""DeLF-style attention pooling; weights: the normalised softplus attention scores."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gspdml.pooling.base import POOLINGS, Pooling, real_count

__all__ = ["DeLFPooling"]


@POOLINGS.register("delf")
class DeLFPooling(Pooling):
    """DeLF-style attention pooling (Noh et al. 2017) adapted to global pooling.

    A score network (1x1 conv ``dim -> hidden``, ReLU, 1x1 conv ``hidden -> 1``, softplus)
    gives a non-negative score ``a_j`` per position; the output is ``(1/n) sum_j a_j f_j``
    (DeLF's attention-weighted sum, divided by the number of real positions so that ``a = 1``
    is GAP). Reported weights are ``a_j / sum_k a_k``.
    """

    name = "delf"

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__(dim)
        # 1x1 convolutions on a map == linear layers on the flattened positions.
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def pool(self, feats, mask):
        a = F.softplus(self.score(feats).squeeze(-1))
        if mask is not None:
            a = a * mask.to(a.dtype)
        pooled = (a.unsqueeze(-1) * feats).sum(dim=1) / real_count(feats, mask)
        weights = a / a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.score[0].out_features}"
