"""Cross-dimensional weighting (CroW, Kalantidis et al. 2016); weights: the spatial weights, normalised."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, real_count

__all__ = ["CroW", "crow_weights"]

OCCUPANCIES = ("nonzero", "sigmoid")


def crow_weights(
    feats: Tensor, mask: Optional[Tensor], a: float = 2.0, b: float = 2.0, occupancy: str = "nonzero", eps: float = 1e-16
) -> tuple[Tensor, Tensor]:
    """CroW's spatial weights (B, n) and channel weights (B, C) of non-negative (B, n, C) features.

    Spatial: ``S'_j = sum_c x_jc``, ``S_j = (S'_j / ||S'||_a)^(1/b)`` over the real positions.
    Channel: ``Q_c`` = share of real positions where channel ``c`` is non-zero (the paper;
    ``occupancy="sigmoid"``: mean of ``sigmoid(x_jc)``, the authors' TF layer),
    ``Omega_c = log((C eps + sum_h Q_h) / (eps + Q_c))``. Masked positions get ``S_j = 0``.
    """
    x = feats if mask is None else feats * mask.unsqueeze(-1).to(feats.dtype)
    s_prime = x.sum(dim=2)
    tiny = torch.finfo(x.dtype).tiny  # clamps before the roots keep their gradients finite at 0
    norm = s_prime.pow(a).sum(dim=1, keepdim=True).clamp_min(tiny).pow(1.0 / a)
    spatial = (s_prime / norm).clamp_min(tiny).pow(1.0 / b)
    if mask is not None:
        spatial = spatial * mask.to(x.dtype)
    occ = (x > 0).to(x.dtype) if occupancy == "nonzero" else torch.sigmoid(x)
    if mask is not None:
        occ = occ * mask.unsqueeze(-1).to(x.dtype)
    q = occ.sum(dim=1) / real_count(x, mask)
    channel = torch.log((x.shape[2] * eps + q.sum(dim=1, keepdim=True)) / (eps + q))
    return spatial, channel


@POOLINGS.register("crow")
class CroW(Pooling):
    """CroW: ``mean_j S_j Omega_c relu(x_jc)`` over the real positions (see :func:`crow_weights`).

    The features are passed through ReLU first (CroW is defined on non-negative activations, as
    in the authors' TF layer). ``a = b = 2`` are the paper's choices. The output keeps ``dim``
    channels (the authors' TF layer adds a Dense projection after; the embedding head projects).
    """

    name = "crow"

    def __init__(self, dim: int, a: float = 2.0, b: float = 2.0, occupancy: str = "nonzero") -> None:
        super().__init__(dim)
        for key, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise InputError(f"crow pooling: {key} must be a finite number > 0, got {value!r}")
        if occupancy not in OCCUPANCIES:
            raise InputError(f"crow pooling: occupancy must be one of {', '.join(OCCUPANCIES)}, got {occupancy!r}")
        self.a, self.b, self.occupancy = float(a), float(b), occupancy

    def pool(self, feats, mask):
        x = torch.relu(feats)
        spatial, channel = crow_weights(x, mask, self.a, self.b, self.occupancy)
        pooled = torch.einsum("bn,bnc->bc", spatial, x) / real_count(x, mask) * channel
        weights = spatial / spatial.sum(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, a={self.a}, b={self.b}, occupancy={self.occupancy}"
