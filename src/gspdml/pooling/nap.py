"""NAP, norm-attention pooling (Tolias et al. 2020, "HOW"); weights: the normalised feature norms."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, real_count

__all__ = ["NormAttentionPooling"]


@POOLINGS.register("nap")
class NormAttentionPooling(Pooling):
    """Norm-attention pooling as in the GSP authors' TF framework (``layers/pooling/norm_attention.py``).

    Each position's attention is its feature norm ``a_j = ||f_j||`` (no gradient through it); the
    features are smoothed by a ``pool_size x pool_size`` average over the neighbouring real
    positions (stride 1, "same" size, padding not counted), mapped by a linear layer
    ``t_j = W s_j + b`` (``dim -> dim``: the dimension is kept) and averaged with the attention:
    ``(1/n) sum_j a_j t_j``. Token sets have no neighbourhoods: there ``s_j = f_j``. Masked
    positions get zero attention and are not counted as neighbours. Reported weights are
    ``a_j / sum_k a_k``.
    """

    name = "nap"

    def __init__(self, dim: int, pool_size: int = 3) -> None:
        super().__init__(dim)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise InputError(f"nap pooling: pool_size must be a positive odd integer, got {pool_size!r}")
        self.pool_size = pool_size
        self.transform = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)

    def _smooth(self, feats: Tensor, mask: Optional[Tensor], spatial) -> Tensor:
        if spatial is None or self.pool_size == 1:
            return feats
        B, n, C = feats.shape
        m = feats.new_ones(B, 1, n) if mask is None else mask.to(feats.dtype).unsqueeze(1)
        k, pad = self.pool_size, self.pool_size // 2
        fmap = feats.transpose(1, 2).reshape(B, C, *spatial)  # masked positions are already zero
        total = F.avg_pool2d(fmap, k, stride=1, padding=pad, count_include_pad=True)
        count = F.avg_pool2d(m.reshape(B, 1, *spatial), k, stride=1, padding=pad, count_include_pad=True)
        smoothed = total / count.clamp_min(torch.finfo(feats.dtype).tiny)
        return smoothed.flatten(2).transpose(1, 2)

    def pool_spatial(self, feats, mask, spatial):
        a = feats.detach().norm(dim=2)  # zero at masked positions
        t = self.transform(self._smooth(feats, mask, spatial))
        pooled = (a.unsqueeze(-1) * t).sum(dim=1) / real_count(feats, mask)
        weights = a / a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return pooled, weights, None

    def pool(self, feats, mask):
        return self.pool_spatial(feats, mask, None)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, pool_size={self.pool_size}"
