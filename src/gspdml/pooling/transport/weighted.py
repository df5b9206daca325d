"""The weighted sum that turns transport weights into a pooled vector."""
from __future__ import annotations

import torch
from torch import Tensor

from gspdml.pooling.transport.cost import channels_first, plain_gradient
from gspdml.pooling.transport.runtime import apply_function

__all__ = ["weighted_sum"]


class _WeightedSum(torch.autograd.Function):
    """``out_b = sum_j w_bj f_bj`` for features (B, n, D) and weights (B, n).

    Autograd's backward of the equivariant ``bmm`` uses a rank-1 GEMM and a slow batched
    mat-vec orientation on CPU; this one uses a broadcast product and the fast orientation, and
    returns the feature gradient in the features' layout (token rows or a channels-first map).
    """

    @staticmethod
    def forward(ctx, feats: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(feats, weights)
        ctx.cols = channels_first(feats)
        return torch.bmm(weights.unsqueeze(1), feats).squeeze(1)  # (1 x n) @ (n x D), either layout

    @staticmethod
    def backward(ctx, grad: Tensor):
        feats, weights = ctx.saved_tensors
        g_f = g_w = None
        if ctx.needs_input_grad[0]:
            if ctx.cols:  # written in the map's layout (B, D, n)
                g_f = plain_gradient((grad.unsqueeze(-1) * weights.unsqueeze(1)).transpose(1, 2))
            else:
                g_f = weights.unsqueeze(-1) * grad.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            g_w = torch.bmm(grad.unsqueeze(1), feats.transpose(1, 2)).squeeze(1)  # (1 x D) @ (D x n)
        return g_f, g_w


def weighted_sum(features: Tensor, weights: Tensor) -> Tensor:
    """Pool (B, n, D) features with (B, n) weights into (B, D): ``sum_j weights_j features_j``."""
    return apply_function(_WeightedSum, features, weights.to(features.dtype))
