""""GAP + attributes" (the GSP authors' MetaGlobalPooling): GAP plus prototype marginals for L_ZS;
weights: uniform over the real positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, masked_mean, uniform_weights

__all__ = ["MetaGlobalPooling"]


@POOLINGS.register("meta_global")
class MetaGlobalPooling(Pooling):
    """Global average pooling that also predicts attribute (prototype) marginals, after the GSP
    authors' ``MetaGlobalPooling`` (TF ``layers/pooling/generalized_sum_pooling.py``).

    The pooled vector is exactly GAP of the (already projected) features. Each real position gets
    a distribution over ``num_prototypes`` attributes, ``softmax(softmax_scale * A f_j / ||f_j||)``
    (``A``: linear ``dim -> num_prototypes``, no bias, Glorot init); their average over the real
    positions is ``details["marginals"]`` (B, num_prototypes), which sums to one, for L_ZS.
    """

    name = "meta_global"
    projects_first = True  # the authors' layer transforms the map first, then pools (model.projection auto)

    def __init__(self, dim: int, num_prototypes: int = 32, softmax_scale: float = 10.0) -> None:
        super().__init__(dim)
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int) or num_prototypes < 1:
            raise InputError(f"meta_global pooling: num_prototypes must be a positive integer, got {num_prototypes!r}")
        if not softmax_scale > 0:
            raise InputError(f"meta_global pooling: softmax_scale must be > 0, got {softmax_scale}")
        self.attributes = nn.Linear(dim, num_prototypes, bias=False)
        nn.init.xavier_uniform_(self.attributes.weight)
        self.softmax_scale = float(softmax_scale)

    def pool(self, feats, mask):
        pooled = masked_mean(feats, mask)
        probs = torch.softmax(self.softmax_scale * self.attributes(F.normalize(feats, dim=2)), dim=2)
        marginals = masked_mean(probs, mask)
        return pooled, uniform_weights(feats, mask), marginals

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_prototypes={self.attributes.out_features}, softmax_scale={self.softmax_scale}"
