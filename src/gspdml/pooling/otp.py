"""OTP, optimal-transport kernel embedding pooling (Mialon et al. 2021); weights: the transport
plan's mass per position (uniform over the real positions)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling

__all__ = ["OTPooling", "sinkhorn_plan"]


def sinkhorn_plan(cost: Tensor, mask: Optional[Tensor], gamma: float, iterations: int) -> Tensor:
    """Entropic transport plan (B, m, n) from ``m`` references (mass ``1/m`` each) to the real
    positions of ``n`` (mass ``1/n_real`` each) for the cost (B, m, n): ``iterations`` Sinkhorn
    rounds on ``K = exp(-gamma * cost)``, ending with the column scaling (columns exact)."""
    B, m, n = cost.shape
    K = torch.exp(-gamma * cost)
    if mask is None:
        q = cost.new_full((B, n), 1.0 / n)
    else:
        real = mask.to(cost.dtype)
        K = K * real.unsqueeze(1)
        q = real / real.sum(dim=1, keepdim=True)
    p = cost.new_full((B, m), 1.0 / m)
    tiny = torch.finfo(cost.dtype).tiny
    u = torch.ones_like(p)
    for _ in range(iterations):
        v = q / torch.einsum("bm,bmn->bn", u, K).clamp_min(tiny)
        u = p / torch.einsum("bmn,bn->bm", K, v).clamp_min(tiny)
    v = q / torch.einsum("bm,bmn->bn", u, K).clamp_min(tiny)
    return u.unsqueeze(2) * K * v.unsqueeze(1)


@POOLINGS.register("otp")
class OTPooling(Pooling):
    """Optimal-transport kernel embedding pooling (OTK, Mialon et al. 2021) as in the GSP authors'
    TF framework (``layers/pooling/otp.py``, ``layers/optimal_transport.py``).

    A linear map (``dim -> dim // num_references``, no bias) gives per-position features ``x_j``;
    the cost to ``num_references`` learned references ``z_k`` is the L2 distance of the
    L2-normalised vectors; an entropic plan ``P`` (``iterations`` Sinkhorn rounds on
    ``exp(-gamma * cost)``, reference masses ``1/m``, position masses ``1/n``) transports the
    positions to the references; each reference aggregates ``sqrt(m) sum_j P_kj x_j`` and the
    ``m`` aggregates are concatenated. The projection before the transport is how the authors
    bring OTK's ``m x d`` output back to ``dim``: ``dim`` must be a multiple of
    ``num_references``. References start from a Glorot-uniform initialisation (the TF layer's
    optional memory-filled k-center initialisation is left out). The plan is computed in at
    least float32. Masked positions get zero mass.
    """

    name = "otp"

    def __init__(self, dim: int, num_references: int = 64, gamma: float = 2.0, iterations: int = 10) -> None:
        super().__init__(dim)
        if isinstance(num_references, bool) or not isinstance(num_references, int) or num_references < 1:
            raise InputError(f"otp pooling: num_references must be a positive integer, got {num_references!r}")
        if dim % num_references != 0:
            raise InputError(
                f"otp pooling: dim ({dim}) must be a multiple of num_references ({num_references}); "
                f"each reference contributes dim // num_references channels"
            )
        if not gamma > 0:
            raise InputError(f"otp pooling: gamma must be > 0, got {gamma}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"otp pooling: iterations must be a positive integer, got {iterations!r}")
        width = dim // num_references
        self.project = nn.Linear(dim, width, bias=False)
        nn.init.xavier_uniform_(self.project.weight)
        self.references = nn.Parameter(torch.empty(num_references, width))
        nn.init.xavier_uniform_(self.references)
        self.gamma = float(gamma)
        self.iterations = iterations

    def plan(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The transport plan (B, m, n) of projected features ``x`` (B, n, dim // m)."""
        work = torch.promote_types(x.dtype, torch.float32)
        refs = F.normalize(self.references.to(work), dim=1)
        cost = torch.cdist(refs.unsqueeze(0).expand(x.shape[0], -1, -1), F.normalize(x.to(work), dim=2))
        return sinkhorn_plan(cost, mask, self.gamma, self.iterations)

    def pool(self, feats, mask):
        x = self.project(feats)
        P = self.plan(x, mask)
        m = P.shape[1]
        pooled = math.sqrt(m) * torch.einsum("bmn,bne->bme", P, x.to(P.dtype)).flatten(1)
        return pooled.to(feats.dtype), P.sum(dim=1).to(feats.dtype), None

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_references={self.references.shape[0]}, gamma={self.gamma}, "
            f"iterations={self.iterations}"
        )
