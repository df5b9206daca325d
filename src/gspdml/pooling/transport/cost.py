"""GSP's cost: the L2 distance between max(1, norm)-normalised features and prototypes.

Two layouts: :func:`cost_points_by_prototypes` gives (B, n, m) (points first, prototypes last:
the layout the solvers reduce over fastest), :func:`prototype_cost` the public (B, m, n).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gspdml.pooling.transport.checks import check_features_and_prototypes
from gspdml.pooling.transport.runtime import apply_function, is_tracing, no_autocast, solver_dtype

__all__ = ["COST_BOUND", "KINK_TOLERANCE", "CHANNELS_FIRST_MIN_N", "CHANNELS_FIRST_MAX_D", "channels_first", "prefer_rows", "normalize_max1", "cost_points_by_prototypes", "prototype_cost"]

#: Normalised vectors have norm <= 1, so every GSP cost lies in [0, COST_BOUND].
COST_BOUND = 2.0

#: ``max(1, |u|)`` has a kink at ``|u| = 1``, where unit-normalised vectors (random or k-center
#: prototypes, L2-normalised features) sit, up to rounding. The backward pass takes the derivative
#: from inside the ball for ``|u| <= 1 + KINK_TOLERANCE``, so it does not depend on the rounding of
#: the norm (float32, float64 and compiled kernels agree); the forward value is continuous there.
KINK_TOLERANCE = 1e-4


def normalize_max1(x: Tensor, dim: int = -1) -> Tensor:
    """GSP's normalisation ``u / max(1, ||u||_2)`` along ``dim`` (vectors shorter than 1 are kept)."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(1.0)


def _normalize_rows(x: Tensor, contiguous: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows ``y = x / max(1, |x|)`` (a contiguous tensor if ``contiguous``, else in ``x``'s
    layout), ``1 / max(1, |x|)``, whether the normalisation's projection enters the backward pass
    (``|x| > 1 + KINK_TOLERANCE``) and ``|y|^2 = min(1, |x|)^2`` (all but ``y`` with a trailing
    singleton dim)."""
    if x.is_contiguous():
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    else:  # a reduction over a strided dim: vecdot is several times faster than vector_norm there
        norm = torch.linalg.vecdot(x, x).unsqueeze(-1).sqrt_()
    inv = norm.clamp_min(1.0).reciprocal()
    if contiguous:  # one pass, whatever x's layout (only called where autograd does not look)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        torch.mul(x.detach(), inv.detach(), out=out)
    else:
        out = x * inv
    return out, inv, norm > 1.0 + KINK_TOLERANCE, norm.clamp_max(1.0).square()


def _normalize_rows_backward(grad: Tensor, y: Tensor, inv: Tensor, big: Tensor) -> Tensor:
    """Backward of :func:`_normalize_rows`: ``inv (g - y (y.g))`` where ``big``, else ``inv g``."""
    k = torch.linalg.vecdot(y, grad).unsqueeze(-1).mul_(big)
    return torch.addcmul(grad, y, k, value=-1.0).mul_(inv)


#: Channels-first maps are computed in their own layout (batched GEMMs on the transposed operand)
#: when they have at least this many positions or at most ``CHANNELS_FIRST_MAX_D`` channels;
#: others (few positions, many channels: narrow batched GEMMs, slow on CPU) are cheaper as one
#: transposing copy into token rows and back. Measured at the ``bench gsp`` shapes on CPU.
CHANNELS_FIRST_MIN_N = 128
CHANNELS_FIRST_MAX_D = 128


def channels_first(feats: Tensor) -> bool:
    """Whether (B, n, D) features are a transposed (B, D, n) tensor (an NCHW map flattened)."""
    return feats.shape[1] > 1 and not feats.is_contiguous() and feats.transpose(1, 2).is_contiguous()


def _rows_to_map(grad: Tensor) -> Tensor:
    """A (B, n, D) row-major gradient in a channels-first map's layout (a transposed contiguous
    (B, D, n) tensor). In eager mode, per-sample 2-D transposes (torch's blocked transpose
    kernel): 2-3x faster on CPU than one strided 3-D copy for wide rows."""
    B, n, D = grad.shape
    out = torch.empty((B, D, n), dtype=grad.dtype, device=grad.device)
    if grad.is_contiguous() and D >= 256 and n >= 8 and grad.device.type == "cpu" and not is_tracing():
        for b in range(B):
            out[b].copy_(grad[b].t())
    else:
        out.copy_(grad.transpose(1, 2))
    return out.transpose(1, 2)


class _RowsCopy(torch.autograd.Function):
    """``feats.contiguous()`` for a channels-first map whose gradient goes back in the map's layout."""

    @staticmethod
    def forward(ctx, feats: Tensor) -> Tensor:
        return feats.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _rows_to_map(grad)


def prefer_rows(feats: Tensor) -> Tensor:
    """(B, n, D) features in the layout the cost computes fastest: token rows as they are,
    channels-first maps as they are (:data:`CHANNELS_FIRST_MIN_N`, :data:`CHANNELS_FIRST_MAX_D`)
    or as one copy into rows (its gradient written back in the map's layout), anything else
    made contiguous."""
    if feats.is_contiguous():
        return feats
    if channels_first(feats):
        if feats.shape[1] >= CHANNELS_FIRST_MIN_N or feats.shape[2] <= CHANNELS_FIRST_MAX_D:
            return feats
        return apply_function(_RowsCopy, feats)
    return feats.contiguous()


class _L2Cost(torch.autograd.Function):
    """GSP cost ``|| f/max(1,|f|) - w/max(1,|w|) ||_2`` as a (B, n, m) tensor, with one GEMM.

    Normalisation is fused in (its backward is written out, which is much cheaper than autograd's
    chain of divisions). ``d^2 = |f|^2 + |w|^2 - 2 f.w`` is clamped at 0 before the square root;
    the backward pass uses the zero subgradient at exactly zero distance instead of inf/NaN.
    Two feature layouts: contiguous (B, n, D) token rows (flat GEMMs) and channels-first maps
    (B, D, n) seen as (B, n, D) (an NCHW map flattened: batched GEMMs on the transposed operand,
    and the feature gradient comes back in the map's layout): neither is transposed in memory.
    Other layouts are made contiguous first.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, protos: Tensor) -> Tensor:  # feats (B, n, D), protos (m, D)
        B, n, D = feats.shape
        m = protos.shape[0]
        cols = channels_first(feats)
        if not cols and not feats.is_contiguous():
            feats = feats.contiguous()
        fb, f_inv, f_big, fsq = _normalize_rows(feats, contiguous=not cols)
        wb, w_inv, w_big, wsq = _normalize_rows(protos)
        if cols:
            d = torch.baddbmm(wsq.reshape(1, 1, m), fb, wb.t().expand(B, D, m), beta=1.0, alpha=-2.0)
            d.add_(fsq).clamp_min_(0.0).sqrt_()
        else:
            d = torch.addmm(wsq.reshape(1, m), fb.reshape(B * n, D), wb.t(), beta=1.0, alpha=-2.0)
            d.add_(fsq.reshape(B * n, 1)).clamp_min_(0.0).sqrt_()
            d = d.reshape(B, n, m)
        ctx.cols = cols
        ctx.save_for_backward(fb, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d)
        return d

    @staticmethod
    def backward(ctx, grad: Tensor):
        fb, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d = ctx.saved_tensors
        B, n, D = fb.shape
        m = wb.shape[0]
        # d d_ji / d fb_j = (fb_j - wb_i) / d_ji
        # exact zeros (coincident points) get the zero subgradient: 1/0 = inf is mapped to 0 (no
        # host-side check: one path for every device, nothing data-dependent under compile;
        # non-finite upstream gradients still propagate). 2x cheaper than torch.where on CPU.
        g = d.reciprocal().nan_to_num_(nan=0.0, posinf=0.0).mul_(grad)
        g2 = g.reshape(B * n, m)
        grad_f = grad_w = None
        if ctx.needs_input_grad[0]:
            # grad wrt fb: fb_j rs_j - M_j with M = g @ wb; then the normalisation backward
            # inv (y - fb (fb . y) [|f| > 1]). The row dots fb_j . M_j are taken from (B, n, m)
            # quantities: fb_j . wb_i = (|fb_j|^2 + |wb_i|^2 - d_ji^2) / 2 and g d^2 = grad d,
            # which saves several passes over the (B, n, D) features.
            rs = g.sum(-1, keepdim=True)  # (B, n, 1)
            gd = torch.linalg.vecdot(grad, d).unsqueeze(-1)
            dot = (fsq * rs + torch.mv(g2, wsq.reshape(m)).reshape(B, n, 1) - gd) * 0.5
            k = (fsq * rs - dot) * f_big
            if ctx.cols:  # M^T = wb^T g^T as (B, D, n): the map's own layout
                M = torch.matmul(wb.t(), g.transpose(1, 2)).transpose(1, 2)
            else:
                M = torch.mm(g2, wb).reshape(B, n, D)
            grad_f = M.mul_(-f_inv).addcmul_(fb, (rs - k) * f_inv)
        if ctx.needs_input_grad[1]:
            if ctx.cols:
                gfw = torch.bmm(g.transpose(1, 2), fb).sum(0)
            else:
                gfw = torch.mm(g2.t(), fb.reshape(B * n, D))
            gwb = torch.addcmul(gfw, wb, g2.sum(0).unsqueeze(-1), value=-1.0).neg_()
            grad_w = _normalize_rows_backward(gwb, wb, w_inv, w_big)
        return grad_f, grad_w


def cost_points_by_prototypes(feats: Tensor, protos: Tensor) -> Tensor:
    """(B, n, m) GSP cost between features (B, n, D) and prototypes (m, D), without validation.

    Normalises both inside; ``feats`` and ``protos`` must share a float32/float64 dtype.
    """
    return apply_function(_L2Cost, feats, protos)


def prototype_cost(features: Tensor, prototypes: Tensor) -> Tensor:
    """GSP's cost matrix ``c_ij = || w_i / max(1, |w_i|) - f_j / max(1, |f_j|) ||_2``.

    Args:
        features: (B, n, D) features.
        prototypes: (m, D) prototypes.

    Returns:
        (B, m, n) cost. It is a transposed view of a contiguous (B, n, m) tensor (the layout the
        solvers reduce over fastest); call ``.contiguous()`` if you need (B, m, n) memory order.
        Half-precision inputs (or calls under autocast) are computed in float32.

    Computed with one matrix product (``|f|^2 + |w|^2 - 2 f.w``, clamped at 0 before the square
    root, with a zero gradient at exactly zero distance), which is several times faster than
    ``torch.cdist`` on CPU, its backward pass especially.
    """
    check_features_and_prototypes(features, prototypes)
    dtype = solver_dtype(torch.promote_types(features.dtype, prototypes.dtype))
    with no_autocast(features.device.type):
        return cost_points_by_prototypes(features.to(dtype), prototypes.to(dtype)).transpose(1, 2)
