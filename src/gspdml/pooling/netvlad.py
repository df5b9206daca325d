"""NetVLAD (Arandjelovic et al. 2016): soft-assignment residual aggregation; weights: uniform."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, uniform_weights

__all__ = ["NetVLAD", "soft_assignment", "vlad_residuals"]


def soft_assignment(logits: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Softmax over the clusters of (B, n, K) logits; rows sum to one, masked positions are zero."""
    assign = torch.softmax(logits, dim=-1)
    return assign if mask is None else assign * mask.unsqueeze(-1).to(assign.dtype)


def vlad_residuals(feats: Tensor, assign: Tensor, centres: Tensor) -> Tensor:
    """``V[b, k] = sum_j assign[b, j, k] (feats[b, j] - centres[k])``: (B, K, d)."""
    return torch.einsum("bnk,bnd->bkd", assign, feats) - assign.sum(dim=1).unsqueeze(-1) * centres


@POOLINGS.register("netvlad")
class NetVLAD(Pooling):
    """NetVLAD with ``clusters`` centres, projected so that the output has ``dim`` channels.

    As in the authors' TF layer (``layers/pooling/vlad.py``): the features are first projected
    to ``d = dim // clusters`` channels (no bias); a linear layer + softmax gives each position's
    soft assignment to the ``clusters`` learnt centres; the assignment-weighted residuals are
    summed per centre, each centre's sum is L2-normalised (intra-normalisation) and the
    ``clusters x d`` result is flattened to ``dim`` channels. ``dim`` must be divisible by
    ``clusters``.
    """

    name = "netvlad"

    def __init__(self, dim: int, clusters: int = 16) -> None:
        super().__init__(dim)
        if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
            raise InputError(f"netvlad pooling: clusters must be a positive integer, got {clusters!r}")
        if dim % clusters:
            raise InputError(
                f"netvlad pooling: dim={dim} is not divisible by clusters={clusters}; the output is "
                f"clusters x (dim // clusters) = dim channels, so choose clusters dividing dim"
            )
        self.clusters = clusters
        d = dim // clusters
        self.project = nn.Linear(dim, d, bias=False)
        self.assign = nn.Linear(d, clusters)
        self.centres = nn.Parameter(torch.empty(clusters, d))
        nn.init.xavier_uniform_(self.centres)

    def pool(self, feats, mask):
        x = self.project(feats)
        assign = soft_assignment(self.assign(x), mask)
        v = F.normalize(vlad_residuals(x, assign, self.centres), dim=-1)
        return v.flatten(1), uniform_weights(feats, mask), None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, clusters={self.clusters}"
