"""SOAP, second-order attention pooling (SOLAR, Ng et al. 2020): self-attention over positions,
a residual, then GeM; weights: GeM's per-channel shares of the enhanced features."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling
from gspdml.pooling.gem import generalized_mean, learnable_exponent

__all__ = ["SOAPooling"]


class _MaskedBatchNorm(nn.BatchNorm1d):
    """Batch normalisation of (B, n, C) features whose statistics use the real positions only."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        out = torch.zeros_like(x)
        out[mask] = super().forward(x[mask])
        return out


@POOLINGS.register("soap")
class SOAPooling(Pooling):
    """Second-order attention pooling as in the GSP authors' TF framework (``layers/pooling/soap.py``).

    Query and key heads (linear ``dim -> dim // channel_reduction``, batch norm, ReLU) and a value
    head (linear) give ``q_j, k_j, v_j``; every position attends to all real positions,
    ``z_i = sum_j softmax_j(q_i . k_j / sqrt(d')) v_j``; a linear map back to ``dim`` gives the
    residual ``f_i + W z_i``, which GeM (learnable ``p`` from 3, inputs clamped at
    ``clamp_eps``) pools. SOAP keeps the dimension, so no projection follows. Batch-norm
    statistics come from the real positions only; masked positions are neither keys nor pooled.
    """

    name = "soap"

    def __init__(
        self, dim: int, channel_reduction: int = 1, p: float = 3.0, clamp_eps: float = 1e-6, learn_p: bool = True
    ) -> None:
        super().__init__(dim)
        if isinstance(channel_reduction, bool) or not isinstance(channel_reduction, int) or channel_reduction < 1:
            raise InputError(f"soap pooling: channel_reduction must be a positive integer, got {channel_reduction!r}")
        if clamp_eps <= 0:
            raise InputError(f"soap pooling: clamp_eps must be > 0, got {clamp_eps}")
        att = max(1, dim // channel_reduction)
        self.query, self.query_norm = nn.Linear(dim, att), _MaskedBatchNorm(att)
        self.key, self.key_norm = nn.Linear(dim, att), _MaskedBatchNorm(att)
        self.value = nn.Linear(dim, att)
        self.out = nn.Linear(att, dim)
        self.p = learnable_exponent(p, learn_p, self.where)
        self.clamp_eps = clamp_eps

    def enhance(self, feats: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The residual-enhanced features ``f + W z`` (B, n, dim), zero at masked positions."""
        q = torch.relu(self.query_norm(self.query(feats), mask))
        k = torch.relu(self.key_norm(self.key(feats), mask))
        logits = torch.einsum("bid,bjd->bij", q, k) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        z = torch.einsum("bij,bjd->bid", torch.softmax(logits, dim=2), self.value(feats))
        enhanced = feats + self.out(z)
        if mask is not None:
            enhanced = enhanced * mask.unsqueeze(-1).to(enhanced.dtype)
        return enhanced

    def pool(self, feats, mask):
        pooled, weights = generalized_mean(self.enhance(feats, mask), mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, attention_dim={self.value.out_features}, p={float(self.p):.3f}"
