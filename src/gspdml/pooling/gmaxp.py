"""Generalized max pooling (GMaxP, Murray & Perronnin 2014); weights: ``|alpha|`` normalised."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling

__all__ = ["GeneralizedMaxPooling", "gmaxp_coefficients"]


def gmaxp_coefficients(feats: Tensor, mask: Optional[Tensor], lam: float) -> Tensor:
    """The location coefficients ``alpha`` (B, n) solving ``(F F^T + lam I) alpha = m``.

    ``F`` is (B, n, C) with zeros at masked positions and ``m`` is 1 at real positions and 0 at
    masked ones, so masked positions get ``alpha = 0``. The pooled vector ``xi = F^T alpha`` is
    the ridge solution of ``min ||F xi - m||^2 + lam ||xi||^2``: every real location has (about)
    the same similarity ``f_j . xi`` to it. Solved in float32 (or the input's wider dtype).
    """
    work = feats if feats.dtype == torch.float64 else feats.float()
    b, n, _ = work.shape
    gram = work @ work.transpose(1, 2)
    eye = torch.eye(n, dtype=work.dtype, device=work.device).expand(b, n, n)
    rhs = work.new_ones(b, n) if mask is None else mask.to(work.dtype)
    return torch.linalg.solve(gram + lam * eye, rhs.unsqueeze(-1)).squeeze(-1)


@POOLINGS.register("gmaxp")
class GeneralizedMaxPooling(Pooling):
    """Generalized max pooling: ``xi = F^T (F F^T + lam I)^{-1} 1`` over the real locations.

    ``xi`` equalises the similarity of each location to the pooled vector (``F xi ~ 1``), so
    frequent, bursty features do not dominate as in sum pooling; ``lam -> inf`` tends to a scaled
    sum pooling. The authors' TF layer pools the raw map and projects afterwards with a Dense
    layer; the output here keeps the input's ``dim`` channels (the embedding head projects). The
    reported weights are ``|alpha_j| / sum_k |alpha_k|`` (``alpha`` itself may be negative).
    """

    name = "gmaxp"

    def __init__(self, dim: int, lam: float = 1.0) -> None:
        super().__init__(dim)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0 or lam == float("inf"):
            raise InputError(f"gmaxp pooling: lam must be a finite number > 0 (ridge regulariser), got {lam!r}")
        self.lam = float(lam)

    def pool(self, feats, mask):
        alpha = gmaxp_coefficients(feats, mask, self.lam)
        pooled = torch.einsum("bn,bnc->bc", alpha, feats.to(alpha.dtype)).to(feats.dtype)
        mag = alpha.abs()
        weights = mag / mag.sum(dim=1, keepdim=True).clamp_min(torch.finfo(mag.dtype).tiny)
        return pooled, weights.to(feats.dtype), None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, lam={self.lam}"
