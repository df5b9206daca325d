"""Global average pooling; weights: uniform over the real positions."""
from __future__ import annotations

from gspdml.pooling.base import POOLINGS, Pooling, masked_mean, uniform_weights

__all__ = ["GAP"]


@POOLINGS.register("gap")
class GAP(Pooling):
    """Global average pooling (over the real positions when a mask is given)."""

    name = "gap"

    def pool(self, feats, mask):
        return masked_mean(feats, mask), uniform_weights(feats, mask), None
