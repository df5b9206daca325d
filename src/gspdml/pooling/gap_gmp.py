"""GAP + GMP (as used by ProxyAnchor, XBM, ...); weights: the mean of GAP's and GMP's."""
from __future__ import annotations

from gspdml.pooling.base import POOLINGS, Pooling, masked_max, masked_mean, uniform_weights
from gspdml.pooling.gmp import argmax_fraction

__all__ = ["GAPGMP"]


@POOLINGS.register("gap+gmp")
class GAPGMP(Pooling):
    """Sum of global average and global max pooling (as used by ProxyAnchor, XBM, ...)."""

    name = "gap+gmp"

    def pool(self, feats, mask):
        mx, argmax = masked_max(feats, mask)
        pooled = masked_mean(feats, mask) + mx
        weights = 0.5 * (uniform_weights(feats, mask) + argmax_fraction(argmax, feats.shape[1], feats.dtype))
        return pooled, weights, None
