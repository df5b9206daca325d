"""GSP's cost: the L2 distance between max(1, norm)-normalised features and prototypes.

Two layouts: :func:`cost_points_by_prototypes` gives (B, n, m) (points first, prototypes last:
the layout the solvers reduce over fastest), :func:`prototype_cost` the public (B, m, n).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gspdml.pooling.transport.checks import check_features_and_prototypes
from gspdml.pooling.transport.runtime import apply_function, is_tracing, no_autocast, solver_dtype

__all__ = ["COST_BOUND", "KINK_TOLERANCE", "MAP_BLOCKED_MIN", "MAP_NORM_BLOCK", "CHANNELS_FIRST_MIN_N", "MAP_FLAT_BACKWARD_MAX_N", "channels_first", "prefer_rows", "plain_gradient", "normalize_max1", "cost_points_by_prototypes", "prototype_cost"]

#: Normalised vectors have norm <= 1, so every GSP cost lies in [0, COST_BOUND].
COST_BOUND = 2.0

#: ``max(1, |u|)`` has a kink at ``|u| = 1``, where unit-normalised vectors (random or k-center
#: prototypes, L2-normalised features) sit, up to rounding. The backward pass takes the derivative
#: from inside the ball for ``|u| <= 1 + KINK_TOLERANCE``, so it does not depend on the rounding of
#: the norm (float32, float64 and compiled kernels agree); the forward value is continuous there.
KINK_TOLERANCE = 1e-4

#: Channels-first maps whose samples have at least this many elements (n * D) get the prototype
#: gradient's products summed sample by sample on CPU (:func:`_map_products_sum`).
MAP_BLOCKED_MIN = 1 << 14

#: Elements per block of :func:`_map_squared_norms` (its squares stay in the CPU cache); maps of
#: more than 4 blocks get their norms that way on CPU, smaller ones in one call.
MAP_NORM_BLOCK = 1 << 18


def normalize_max1(x: Tensor, dim: int = -1) -> Tensor:
    """GSP's normalisation ``u / max(1, ||u||_2)`` along ``dim`` (vectors shorter than 1 are kept)."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(1.0)


def _row_scales(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For rows ``x`` (B, n, D) or (m, D): ``1 / max(1, |x|)``, whether the normalisation's
    projection enters the backward pass (``|x| > 1 + KINK_TOLERANCE``) and ``min(1, |x|)^2``
    (the squared norm of the normalised rows), each with a trailing singleton dim."""
    if x.is_contiguous():
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    elif not is_tracing() and x.device.type == "cpu" and channels_first(x) and x.numel() > 4 * MAP_NORM_BLOCK:
        norm = _map_squared_norms(x).sqrt_()
    else:  # a reduction over a strided dim: vecdot is several times faster than vector_norm there
        norm = torch.linalg.vecdot(x, x).unsqueeze(-1).sqrt_()
    return norm.clamp_min(1.0).reciprocal(), norm > 1.0 + KINK_TOLERANCE, norm.clamp_max(1.0).square()


def _normalize_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Contiguous rows ``y = x / max(1, |x|)`` (one pass, whatever ``x``'s layout; only called
    where autograd does not look) and the three :func:`_row_scales`."""
    inv, big, sq = _row_scales(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.mul(x.detach(), inv.detach(), out=out)
    return out, inv, big, sq


def _map_squared_norms(x: Tensor) -> Tensor:
    """``|x_j|^2`` as (B, n, 1) for channels-first (B, n, D) features (a transposed (B, D, n)
    tensor), summed over the channels (the outer dim in memory, a vectorised reduction) a block
    of samples at a time, so that the squares stay in the cache: 1.5-2x faster on CPU than one
    ``vecdot`` over the strided dim, whose squares go through memory."""
    cols = x.transpose(1, 2)
    B, D, n = cols.shape
    out = torch.empty((B, 1, n), dtype=x.dtype, device=x.device)
    step = max(1, MAP_NORM_BLOCK // (D * n))
    for b in range(0, B, step):
        block = cols[b:b + step]
        torch.sum(block * block, dim=1, keepdim=True, out=out[b:b + step])
    return out.transpose(1, 2)


def _normalize_rows_backward(grad: Tensor, y: Tensor, inv: Tensor, big: Tensor) -> Tensor:
    """Backward of :func:`_normalize_rows`: ``inv (g - y (y.g))`` where ``big``, else ``inv g``."""
    k = torch.linalg.vecdot(y, grad).unsqueeze(-1).mul_(big)
    return torch.addcmul(grad, y, k, value=-1.0).mul_(inv)


#: Channels-first maps with at least this many positions are computed in their own layout
#: (batched GEMMs on the transposed operand); smaller ones (narrow batched GEMMs, slow on CPU)
#: channel-major: one copy of the map into (D, B n) (runs of n contiguous values, no element
#: transpose), flat GEMMs as for token rows, and one such copy of the gradient back.
#: Measured at the ``bench gsp`` shapes on CPU.
CHANNELS_FIRST_MIN_N = 128

#: Channels-first maps with fewer positions than this (and at least ``CHANNELS_FIRST_MIN_N``)
#: take the backward pass's feature-side product as one flat GEMM into (D, B n) plus one copy
#: into the map's layout instead of batched GEMMs (narrow ones: slower on CPU). Measured.
MAP_FLAT_BACKWARD_MAX_N = 512


def channels_first(feats: Tensor) -> bool:
    """Whether (B, n, D) features are a transposed (B, D, n) tensor (an NCHW map flattened)."""
    return feats.shape[1] > 1 and not feats.is_contiguous() and feats.transpose(1, 2).is_contiguous()


def plain_gradient(grad: Tensor) -> Tensor:
    """A gradient a backward pass returns, as a tensor that is not a view: autograd sums the
    gradients of a tensor used twice in place only into a non-view, so a channels-first map's
    gradient (a transposed view of a (B, D, n) tensor) would otherwise cost an extra full-size
    out-of-place sum. The same values and layout; kept as it is while traced or building a graph
    for a higher-order gradient (where ``detach`` would cut it)."""
    if not is_tracing() and not torch.is_grad_enabled() and grad._is_view():
        return grad.detach()
    return grad


def _map_products_sum(x: Tensor, g: Tensor) -> Tensor:
    """``sum_b g_b^T x_b`` (m, D) for channels-first (B, n, D) features and a (B, n, m) ``g``:
    in eager mode on CPU accumulated sample by sample as ``x_b^T g_b`` (plain GEMMs on the map's
    own (D, n) rows), without the (B, m, D) products a batched GEMM writes before the sum."""
    B, n, D = x.shape
    if is_tracing() or x.device.type != "cpu" or n * D < MAP_BLOCKED_MIN:
        return torch.bmm(g.transpose(1, 2), x).sum(0)
    cols = x.transpose(1, 2)
    acc = torch.mm(cols[0], g[0])
    for b in range(1, B):
        acc.addmm_(cols[b], g[b])
    return acc.t()


def prefer_rows(feats: Tensor) -> Tensor:
    """(B, n, D) features in a layout the cost and the weighted sum compute in directly: token
    rows and channels-first maps as they are (the cost picks its GEMMs by layout, and gradients
    come back in the map's layout), anything else made contiguous."""
    if feats.is_contiguous() or channels_first(feats):
        return feats
    return feats.contiguous()


class _L2Cost(torch.autograd.Function):
    """GSP cost ``|| f/max(1,|f|) - w/max(1,|w|) ||_2`` as a (B, n, m) tensor, with one GEMM.

    Normalisation is fused in (its backward is written out, which is much cheaper than autograd's
    chain of divisions). ``d^2 = |f|^2 + |w|^2 - 2 f.w`` is clamped at 0 before the square root;
    the backward pass uses the zero subgradient at exactly zero distance instead of inf/NaN.
    Two feature layouts: contiguous (B, n, D) token rows (flat GEMMs) and channels-first maps
    (B, D, n) seen as (B, n, D) (an NCHW map flattened), whose feature gradient comes back in the
    map's layout and whose normalised features are never written out (the GEMM takes the map,
    its rows are scaled after: ``|fb|^2 + |wb|^2 - 2 inv (f . wb)``). Maps with at least
    :data:`CHANNELS_FIRST_MIN_N` positions use batched GEMMs on the transposed operand, smaller
    ones one channel-major copy (D, B n) and flat GEMMs. Neither is transposed element-wise in
    memory. Other layouts are made contiguous first.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, protos: Tensor) -> Tensor:  # feats (B, n, D), protos (m, D)
        B, n, D = feats.shape
        m = protos.shape[0]
        cols = channels_first(feats)
        if not cols and not feats.is_contiguous():
            feats = feats.contiguous()
        wb, w_inv, w_big, wsq = _normalize_rows(protos)
        major = cols and n < CHANNELS_FIRST_MIN_N
        if major:  # channel-major (D, B n) copy of the map, one flat GEMM
            f_inv, f_big, fsq = (t.reshape(B, n, 1) for t in _row_scales(feats))
            f_saved = feats.detach().permute(2, 0, 1).contiguous().view(D, B * n)
            d = torch.mm(f_saved.t(), wb.t())
            d.mul_(f_inv.reshape(B * n, 1) * -2.0).add_(fsq.reshape(B * n, 1)).add_(wsq.reshape(1, m))
            d = d.clamp_min_(0.0).sqrt_().view(B, n, m)
        elif cols:  # batched GEMMs on the map itself
            f_inv, f_big, fsq = _row_scales(feats)
            d = torch.bmm(feats, wb.t().expand(B, D, m))
            d.mul_(f_inv * -2.0).add_(fsq).add_(wsq.reshape(1, 1, m)).clamp_min_(0.0).sqrt_()
            f_saved = feats.detach()
        else:
            f_saved, f_inv, f_big, fsq = _normalize_rows(feats)
            d = torch.addmm(wsq.reshape(1, m), f_saved.reshape(B * n, D), wb.t(), beta=1.0, alpha=-2.0)
            d.add_(fsq.reshape(B * n, 1)).clamp_min_(0.0).sqrt_()
            d = d.reshape(B, n, m)
        ctx.cols, ctx.major, ctx.shape = cols, major, (B, n, D)
        ctx.save_for_backward(f_saved, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d)
        return d

    @staticmethod
    def backward(ctx, grad: Tensor):
        # f: the normalised rows fb (token rows), the map's own features x (channels-first, as
        # (B, n, D)) or their channel-major copy (D, B n); fb = inv x is never written out for maps
        f, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d = ctx.saved_tensors
        B, n, D = ctx.shape
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
            if ctx.major:  # M^T = wb^T g^T as (D, B n), copied back into the map's layout
                MT = torch.mm(wb.t(), g2.t())
                MT.mul_(-f_inv.reshape(1, B * n)).addcmul_(f, ((rs - k) * f_inv.square()).reshape(1, B * n))
                grad_f = plain_gradient(MT.view(D, B, n).permute(1, 0, 2).contiguous().transpose(1, 2))
            elif ctx.cols:  # M^T = wb^T g^T in the map's layout (B, D, n); fb = inv x
                if n < MAP_FLAT_BACKWARD_MAX_N:  # one flat GEMM (D, B n), copied into (B, D, n)
                    M = torch.mm(wb.t(), g2.t()).view(D, B, n).permute(1, 0, 2).contiguous().transpose(1, 2)
                else:
                    M = torch.matmul(wb.t(), g.transpose(1, 2)).transpose(1, 2)
                grad_f = plain_gradient(M.mul_(-f_inv).addcmul_(f, (rs - k) * f_inv.square()))
            else:
                M = torch.mm(g2, wb).reshape(B, n, D)
                grad_f = M.mul_(-f_inv).addcmul_(f, (rs - k) * f_inv)
        if ctx.needs_input_grad[1]:
            if ctx.major:  # sum_j g_ji fb_j = sum_j (g_ji inv_j) x_j, here and below
                gfw = torch.mm(f, g2 * f_inv.reshape(B * n, 1)).t()
            elif ctx.cols:
                gfw = _map_products_sum(f, g * f_inv)
            else:
                gfw = torch.mm(g2.t(), f.reshape(B * n, D))
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
