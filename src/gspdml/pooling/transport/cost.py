"""GSP's cost: the L2 distance between max(1, norm)-normalised features and prototypes.

Two layouts: :func:`cost_points_by_prototypes` gives (B, n, m) (points first, prototypes last:
the layout the solvers reduce over fastest), :func:`prototype_cost` the public (B, m, n).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gspdml.pooling.transport import runtime
from gspdml.pooling.transport.checks import check_features_and_prototypes
from gspdml.pooling.transport.runtime import no_autocast, solver_dtype

__all__ = ["COST_BOUND", "normalize_max1", "cost_points_by_prototypes", "prototype_cost"]

#: Normalised vectors have norm <= 1, so every GSP cost lies in [0, COST_BOUND].
COST_BOUND = 2.0


def normalize_max1(x: Tensor, dim: int = -1) -> Tensor:
    """GSP's normalisation ``u / max(1, ||u||_2)`` along ``dim`` (vectors shorter than 1 are kept)."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(1.0)


def _normalize_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows ``y = x / max(1, |x|)`` as a contiguous tensor, ``1 / max(1, |x|)``, ``|x| > 1`` and
    ``|y|^2 = min(1, |x|)^2`` (all but ``y`` with a trailing singleton dim)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inv = norm.clamp_min(1.0).reciprocal_()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.mul(x, inv, out=out)
    return out, inv, norm > 1.0, norm.clamp_max(1.0).square_()


def _normalize_rows_backward(grad: Tensor, y: Tensor, inv: Tensor, big: Tensor) -> Tensor:
    """Backward of :func:`_normalize_rows`: ``inv (g - y (y.g))`` where ``|x| > 1``, else ``g``."""
    k = torch.linalg.vecdot(y, grad).unsqueeze(-1).mul_(big)
    return torch.addcmul(grad, y, k, value=-1.0).mul_(inv)


class _L2Cost(torch.autograd.Function):
    """GSP cost ``|| f/max(1,|f|) - w/max(1,|w|) ||_2`` as a (B, n, m) tensor, with one GEMM.

    Normalisation is fused in (its backward is written out, which is much cheaper than autograd's
    chain of divisions). ``d^2 = |f|^2 + |w|^2 - 2 f.w`` is clamped at 0 before the square root;
    the backward pass uses the zero subgradient at exactly zero distance instead of inf/NaN.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, protos: Tensor) -> Tensor:  # feats (B, n, D), protos (m, D)
        B, n, D = feats.shape
        m = protos.shape[0]
        fb, f_inv, f_big, fsq = _normalize_rows(feats)
        wb, w_inv, w_big, wsq = _normalize_rows(protos)
        f2 = fb.view(B * n, D)
        d = torch.addmm(wsq.view(1, m), f2, wb.t(), beta=1.0, alpha=-2.0)
        d.add_(fsq.view(B * n, 1)).clamp_min_(0.0).sqrt_()
        d = d.view(B, n, m)
        # exact zeros (coincident points) need the zero subgradient; detect them cheaply on CPU
        if d.device.type == "cpu" and runtime.CPU_FAST_PATHS:
            ctx.zero_check = bool(d.amin() <= 0.0)
        else:  # no host synchronisation on accelerators
            ctx.zero_check = "where"
        ctx.save_for_backward(fb, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d)
        return d

    @staticmethod
    def backward(ctx, grad: Tensor):
        fb, f_inv, f_big, fsq, wb, w_inv, w_big, wsq, d = ctx.saved_tensors
        B, n, D = fb.shape
        m = wb.shape[0]
        # d d_ji / d fb_j = (fb_j - wb_i) / d_ji
        if ctx.zero_check == "where":
            g = torch.where(d > 0, grad / d, 0.0)
        else:
            g = grad / d
            if ctx.zero_check:
                g.masked_fill_(d == 0, 0.0)
        g2 = g.reshape(B * n, m)
        f2 = fb.view(B * n, D)
        grad_f = grad_w = None
        if ctx.needs_input_grad[0]:
            # grad wrt fb: fb_j rs_j - M_j with M = g @ wb; then the normalisation backward
            # inv (y - fb (fb . y) [|f| > 1]). The row dots fb_j . M_j are taken from (B, n, m)
            # quantities: fb_j . wb_i = (|fb_j|^2 + |wb_i|^2 - d_ji^2) / 2 and g d^2 = grad d,
            # which saves several passes over the (B, n, D) features.
            rs = g2.sum(-1, keepdim=True)
            fsq2 = fsq.view(B * n, 1)
            gd = torch.linalg.vecdot(grad, d).reshape(B * n, 1)
            dot = (fsq2 * rs + torch.mv(g2, wsq.view(m)).unsqueeze(1) - gd) * 0.5
            k = (fsq2 * rs - dot) * f_big.view(B * n, 1)
            inv = f_inv.view(B * n, 1)
            grad_f = torch.mm(g2, wb).mul_(-inv).addcmul_(f2, (rs - k) * inv).view(B, n, D)
        if ctx.needs_input_grad[1]:
            gwb = torch.addmm(wb * g2.sum(0).unsqueeze(-1), g2.t(), f2, alpha=-1.0)
            grad_w = _normalize_rows_backward(gwb, wb, w_inv, w_big)
        return grad_f, grad_w


def cost_points_by_prototypes(feats: Tensor, protos: Tensor) -> Tensor:
    """(B, n, m) GSP cost between features (B, n, D) and prototypes (m, D), without validation.

    Normalises both inside; ``feats`` and ``protos`` must share a float32/float64 dtype.
    """
    return _L2Cost.apply(feats, protos)


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
