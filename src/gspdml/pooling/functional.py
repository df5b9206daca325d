"""The GSP transport problem, solved exactly (default) or by the paper's fixed-point iteration.

Given a cost ``c`` (B, m, n) between m prototypes and n features, GSP solves per sample

    minimise   sum_ij c_ij pi_ij + (1/eps) (H(pi) + H(rho))
    subject to rho_j + sum_i pi_ij = 1/n   (every feature j),   sum_ij pi_ij = mu,   pi, rho >= 0

(``H(x) = sum x log x``). The pooling weights are ``p_j = (1/n - rho_j) / mu`` and the prototype
marginals ``z_i = sum_j pi_ij / mu``; both sum to one.

Exact solver (``solver="exact"``). With ``a_j = logsumexp_i(-eps c_ij)`` and ``sigma_j =
sigmoid(a_j + u)`` the optimum is

    rho_j = (1 - sigma_j) / n,   p_j = sigma_j / (n mu),   pi_ij = softmax_i(-eps c_ij) sigma_j / n,

where the scalar ``u`` is the unique root of the increasing function ``mean_j sigmoid(a_j + u) - mu``.
The root is found by a bracketed, safeguarded Newton iteration in float64 (quadratic convergence,
typically 1-6 steps to the resolution of the dtype); everything is computed in the log domain, so the solver is
finite and accurate for any ``eps`` (tested up to 100). The backward pass is the exact derivative of
this closed form, with the implicit derivative ``du/da_j = -sigma_j (1 - sigma_j) / sum_k sigma_k (1 -
sigma_k)`` of the root; it never differentiates through Newton steps and keeps no per-iteration state.

Fixed-point solver (``solver="fixed_point"``). The iteration of Prop. 4.2 of Gurbuz et al. (start
``t = 1``; ``rho = (1/n) / (1 + t s)``, ``t = mu / (s . rho)`` with ``s_j = sum_i exp(-eps c_ij)``),
run for ``iters`` steps (with ``s`` rescaled per sample, which leaves the iterates unchanged and
avoids overflow at large ``eps``), with the closed-form backward of Prop. 4.3 (which assumes a
converged point). This is a
faithful reproduction of the paper's layer; it converges linearly and can be far from the optimum
after 100 steps when features cluster tightly around prototypes at large ``eps``.

Padding: ``mask`` (B, n), True for real features. Padded features get zero weight, zero residual
and zero plan, and the real ones are exactly the solution for the unpadded set (n = number of real
features of that sample).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from gspdml.errors import InputError

__all__ = [
    "TransportResult",
    "partial_transport",
    "prototype_cost",
    "normalize_max1",
    "weighted_sum",
    "SOLVERS",
]

SOLVERS = ("exact", "fixed_point")

_NEWTON_MAX_ITERS = 100
# CPU-only shortcuts (numpy views in the Newton loop, cheap exact-zero detection in the cost).
# Tests switch them off to run the device-generic code path (the one CUDA takes) on CPU.
_CPU_FAST_PATHS = True
_LOG2E = 1.0 / math.log(2.0)


class TransportResult(NamedTuple):
    """Solution of the GSP transport problem for a batch.

    Attributes:
        rho: (B, n) residual (untransported) mass of every feature; ``rho_j + sum_i plan_ij = 1/n``.
        plan: (B, m, n) transport plan ``pi``; sums to ``mu`` per sample.
        weights: (B, n) pooling weights ``p = (1/n - rho) / mu`` (sum to 1; 0 at padded features).
        marginals: (B, m) prototype marginals ``z = plan.sum(-1) / mu`` (sum to 1).
    """

    rho: Tensor
    plan: Tensor
    weights: Tensor
    marginals: Tensor


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


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
        if d.device.type == "cpu" and _CPU_FAST_PATHS:
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


class _WeightedSum(torch.autograd.Function):
    """``out_b = sum_j w_bj f_bj`` for features (B, n, D) and weights (B, n).

    Autograd's backward of the equivalent ``bmm`` uses a rank-1 GEMM and a slow batched
    mat-vec orientation on CPU; this one uses a broadcast product and the fast orientation.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(feats, weights)
        return torch.bmm(weights.unsqueeze(1), feats).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        feats, weights = ctx.saved_tensors
        g_f = g_w = None
        if ctx.needs_input_grad[0]:
            g_f = weights.unsqueeze(-1) * grad.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            g_w = torch.bmm(grad.unsqueeze(1), feats.transpose(1, 2)).squeeze(1)
        return g_f, g_w


def weighted_sum(features: Tensor, weights: Tensor) -> Tensor:
    """Pool (B, n, D) features with (B, n) weights into (B, D): ``sum_j weights_j features_j``."""
    return _WeightedSum.apply(features, weights.to(features.dtype))


def _cost_t(feats: Tensor, protos: Tensor) -> Tensor:
    """(B, n, m) GSP cost between features (B, n, D) and prototypes (m, D) (normalised inside)."""
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
    if not isinstance(features, Tensor) or features.dim() != 3:
        raise InputError(
            f"prototype_cost: features must be a (B, n, D) tensor, got {_describe(features)}"
        )
    if not isinstance(prototypes, Tensor) or prototypes.dim() != 2:
        raise InputError(
            f"prototype_cost: prototypes must be an (m, D) tensor, got {_describe(prototypes)}"
        )
    if features.shape[-1] != prototypes.shape[-1]:
        raise InputError(
            f"prototype_cost: feature dimension {features.shape[-1]} does not match the prototype "
            f"dimension {prototypes.shape[-1]}; both must have the same last dimension D"
        )
    if not (features.is_floating_point() and prototypes.is_floating_point()):
        raise InputError(
            f"prototype_cost: features and prototypes must be floating point, got "
            f"{features.dtype} and {prototypes.dtype}"
        )
    dtype = solver_dtype(torch.promote_types(features.dtype, prototypes.dtype))
    with _no_autocast(features.device.type):
        return _cost_t(features.to(dtype), prototypes.to(dtype)).transpose(1, 2)


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GSP computes in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Exact solver
# ---------------------------------------------------------------------------------------------


def _kernel(ct: Tensor, eps: float, shift: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Column-scaled kernel ``E_ji = exp(-eps (c_ji - shift_j))`` (layout of ``ct``, prototypes
    last), its row sums ``s`` (B, n) and ``a = logsumexp_i(-eps c_ji)`` (B, n).

    ``softmax_i(-eps c) = E / s`` is never materialised: the solvers fold ``1/s`` into their
    per-feature vectors, which saves a full pass over the (B, n, m) tensor. ``shift=False`` skips
    the per-row max-shift; only valid when ``eps * c`` cannot underflow (bounded costs).
    """
    # exp(x) as exp2(x log2(e)): the same rounding of the scaled argument, and exp2 is a cheaper
    # vectorised kernel on CPU (about 2x here)
    scale = eps * _LOG2E
    if shift:
        cmin = ct.amin(-1, keepdim=True)
        E = torch.sub(cmin, ct).mul_(scale).exp2_()
    else:
        E = torch.mul(ct, -scale).exp2_()
    s = E.sum(-1)
    a = torch.log(s)
    if shift:
        a = a - eps * cmin.squeeze(-1)
    return E, s, a


def _needs_shift(dtype: torch.dtype, eps: float, cost_bound: Optional[float]) -> bool:
    if cost_bound is None:
        return True
    limit = 600.0 if dtype == torch.float64 else 75.0  # exp(-limit) well inside the normal range
    return eps * cost_bound > limit


def _solve_root(a: Tensor, count: Optional[Tensor], mu: float, padded: bool,
                resolution: float = 2.0 ** -53) -> Tensor:
    """Root ``u`` (B,) of ``sum_j sigmoid(a_j + u) = mu * count_b``; ``a`` float64 (B, n) with
    ``-inf`` at padded features, ``count`` the number of real features per sample.

    Bracketed Newton: the root lies in ``[logit(mu) - max_j a_j, logit(mu) - min_j a_j]`` (some
    sigmoid must be >= mu and some <= mu); a Newton step that leaves the current bracket is
    replaced by bisection, so it always converges, and quadratically near the root (1-6 steps
    from ``logit(mu) - mean(a)`` in practice). Near the root the error after a step ``h`` is at
    most ``h^2 / 2`` (``|F''| <= F'`` for sums of sigmoids), so it stops once that bound is below
    ``resolution``: float64 round-off by default, float32's for float32 outputs (the inputs ``a``
    carry that much error already), which saves one Newton step.
    The (B, n) sigmoid sums run in torch (fast vectorised exp), the bookkeeping of the B scalars
    (bracket, safeguard, stopping rule) in numpy, whose per-call cost is far below torch's.
    """
    B = a.shape[0]
    if mu >= 1.0:
        return torch.full((B,), math.inf, dtype=torch.float64, device=a.device)
    logit_mu = math.log(mu) - math.log1p(-mu)
    on_cpu = a.device.type == "cpu" and _CPU_FAST_PATHS
    if on_cpu:
        a_np = a.numpy()
        # without padding (count None) every sample has n features
        cnt = float(a.shape[1]) if count is None else count.numpy().astype(np.float64)
        if padded:
            real = np.isfinite(a_np)
            a_max = a_np.max(1)
            a_min = np.where(real, a_np, np.inf).min(1)
            a_mean = np.where(real, a_np, 0.0).sum(1) / cnt
        else:
            a_max, a_min, a_mean = a_np.max(1), a_np.min(1), a_np.mean(1)
    else:
        if count is None:
            count = torch.full((B,), a.shape[1], dtype=torch.float64, device=a.device)
        if padded:
            real = torch.isfinite(a)
            stats = torch.stack([a.amax(1), a.masked_fill(~real, math.inf).amin(1),
                                 a.masked_fill(~real, 0.0).sum(1) / count, count.double()])
        else:
            stats = torch.stack([a.amax(1), a.amin(1), a.mean(1), count.double()])
        a_max, a_min, a_mean, cnt = stats.cpu().numpy()
    lo, hi = logit_mu - a_max, logit_mu - a_min
    u = np.array(logit_mu - a_mean, dtype=np.float64)
    target = mu * cnt
    step_tol = math.sqrt(2.0 * resolution)  # error after the step <= step^2 / 2 <= resolution
    x = torch.empty_like(a)
    if on_cpu:  # numpy views of torch buffers: no conversions inside the loop
        u_col = torch.from_numpy(u).unsqueeze(1)
        sums_t = torch.empty((2, B), dtype=torch.float64)
        sum_out, norm_out = sums_t[0], sums_t[1]
        sums = sums_t.numpy()
    for _ in range(_NEWTON_MAX_ITERS):
        if on_cpu:
            torch.add(a, u_col, out=x).sigmoid_()
            torch.sum(x, 1, out=sum_out)
            torch.linalg.vector_norm(x, dim=1, out=norm_out)
            F, Q = sums
        else:
            torch.add(a, torch.from_numpy(u).to(a.device).unsqueeze(1), out=x).sigmoid_()
            F, Q = torch.stack([x.sum(1), torch.linalg.vector_norm(x, dim=1)]).cpu().numpy()
        f = F - target
        below = f < 0  # the root is above u
        lo = np.where(below, u, lo)
        hi = np.where(below, hi, u)
        # f' = sum sigma (1 - sigma); it is 0 only if every sigmoid saturated (then bisect)
        step = f / np.maximum(F - Q * Q, 1e-300)
        new = u - step
        ok = (new >= lo) & (new <= hi)
        if ok.all():
            u[:] = new
            if np.abs(step).max() <= step_tol:
                break
        else:
            u[:] = np.where(ok, new, 0.5 * (lo + hi))
            if ((hi - lo) <= 4e-16 * (1.0 + np.abs(u))).all():
                break
    return torch.from_numpy(u).to(a.device)


class _ExactTransport(torch.autograd.Function):
    """Closed-form GSP solution with its exact backward.

    Input: the cost in (B, n, m) layout (padded rows already finite). Outputs: weights p (B, n),
    rho (B, n), marginals z (B, m) and, when asked, the plan in (B, n, m) layout.

    ``a``, the root and the sigmoids are computed in float64 (then rounded once to the working
    dtype); the per-feature vectors the backward pass needs are prepared here once, so that the
    backward pass is a few vector operations plus two passes over the (B, n, m) kernel.
    """

    @staticmethod
    def forward(ctx, ct: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                eps: float, with_plan: bool, shift: bool):
        ctx.set_materialize_grads(False)
        dtype = ct.dtype
        E, s, a = _kernel(ct, eps, shift)  # P = E / s: softmax over prototypes
        a = a.double()
        if real is not None:
            a = a.masked_fill_(~real, -math.inf)
        resolution = 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24
        u = _solve_root(a, count, mu, real is not None, resolution)
        # 1/n: a number without padding, else (B, 1)
        inv_n = 1.0 / ct.shape[1] if real is None else count.to(dtype).reciprocal_().unsqueeze(1)
        if mu >= 1.0:  # u = +inf: everything is transported
            sig = torch.ones_like(E[..., 0]) if real is None else real.to(dtype)
            sigc = torch.zeros_like(sig)
        else:
            x = a + u.unsqueeze(1)  # float64; the sigmoids are rounded once to dtype
            sig = torch.sigmoid(x).to(dtype)
            sigc = torch.sigmoid(x.neg_()).to(dtype)  # 1 - sigma with full relative precision
            if real is not None:
                sigc.masked_fill_(~real, 0.0)
        weights = sig * (inv_n / mu)
        rho = sigc * inv_n
        inv_s = s.reciprocal()
        z = torch.bmm((weights * inv_s).unsqueeze(1), E).squeeze(1)
        plan = E * (sig * inv_n * inv_s).unsqueeze(-1) if with_plan else None
        if ctx.needs_input_grad[0]:
            ds = sig * sigc  # sigma (1 - sigma), zero at padding
            S = ds.sum(1, keepdim=True).clamp_min_(torch.finfo(dtype).tiny)  # 0 only if all saturated
            c_v = inv_s * inv_n  # v_j = (E @ H)_j / (s_j n)
            neg_eps_inv_s = inv_s.mul_(-eps)
            ctx.mu = mu
            ctx.vecs = (inv_n / mu, inv_n, c_v, ds, S, sig, neg_eps_inv_s,
                        (c_v * sig).mul_(-eps).unsqueeze(-1))  # beta = -eps sigma / (n s)
            ctx.save_for_backward(E)
        return weights, rho, z, plan

    @staticmethod
    def backward(ctx, g_w, g_rho, g_z, g_plan):
        (E,) = ctx.saved_tensors
        c_w, c_rho, c_v, ds, S, sig, neg_eps_inv_s, beta = ctx.vecs
        mu = ctx.mu
        # H_ij: gradient on pi_ij (z_i = sum_j pi_ij / mu); v_j = sum_i P_ij H_ij / n, P = E / s
        H = v = None
        if g_plan is not None:
            H = g_plan if g_z is None else g_plan + (g_z * (1.0 / mu)).unsqueeze(1)
            v = torch.linalg.vecdot(E, H) * c_v
        elif g_z is not None:
            H = (g_z * (1.0 / mu)).unsqueeze(1)  # rank one: (B, 1, m)
            # E @ H as (1 x m) @ (m x n): the fast orientation for batched mat-vec on CPU
            v = torch.bmm(H, E.transpose(1, 2)).squeeze(1) * c_v
        # gradient on sigma: p = sigma / (n mu), rho = (1 - sigma) / n, plus the plan part v
        g_sig = v
        if g_w is not None:
            g_sig = g_w * c_w if g_sig is None else g_sig + g_w * c_w  # (v is used again below)
        if g_rho is not None:
            g_sig = g_rho * -c_rho if g_sig is None else g_sig - g_rho * c_rho
        if g_sig is None:
            return None, None, None, None, None, None, None
        # implicit derivative of the root: g_a = ds (g_sig - lam), lam = <g_sig, ds> / sum(ds)
        lam = (g_sig * ds).sum(1, keepdim=True).div_(S)
        alpha = (g_sig - lam).mul_(ds)
        if v is not None:
            alpha.addcmul_(sig, v, value=-1.0)
        # dLoss/dc_ij = -eps P_ij (alpha_j + beta_j H_ij) with P = E / s
        alpha = alpha.mul_(neg_eps_inv_s).unsqueeze(-1)
        if H is None:
            grad = E * alpha
        elif g_plan is None:
            grad = torch.baddbmm(alpha, beta, H).mul_(E)
        else:
            grad = torch.addcmul(alpha, beta, H).mul_(E)
        return grad, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Paper's fixed point (Prop. 4.2) with the closed-form backward (Prop. 4.3)
# ---------------------------------------------------------------------------------------------


class _FixedPointTransport(torch.autograd.Function):
    """Prop. 4.2 for ``iters`` steps, Prop. 4.3 backward. Outputs rho (B, n) and plan (B, n, m)."""

    @staticmethod
    def forward(ctx, ct: Tensor, real: Optional[Tensor], count: Tensor, mu: float, eps: float,
                iters: int, shift: bool):
        ctx.set_materialize_grads(False)
        E, s_row, a = _kernel(ct, eps, shift)  # a_j = log s_j = log sum_i K_ij
        countf = count.to(ct.dtype)
        inv_n = countf.reciprocal().unsqueeze(1)
        if real is not None:
            a = a.masked_fill(~real, -math.inf)
        # The iteration is invariant to rescaling s -> s / c, t -> t c: scale s by its per-sample
        # max so that nothing overflows at any eps (the iterates are the paper's, t = t~ / c).
        a_max = a.amax(1, keepdim=True)
        s_sc = (a - a_max).exp_()
        t = a_max.exp()  # t^(0) = 1, rescaled; (B, 1)
        one = torch.ones((), dtype=ct.dtype, device=ct.device)
        rho = None
        for _ in range(iters):
            # rho = (1/n) / (1 + t s) ;  t = mu / (s . rho)
            rho = inv_n / torch.addcmul(one, t, s_sc)
            t = mu / torch.linalg.vecdot(s_sc, rho).unsqueeze(1)
        if rho is None:  # iters == 0: rho from t^(0)
            rho = inv_n / torch.addcmul(one, t, s_sc)
        col = t * s_sc * rho  # sum_i pi_ij = t s_j rho_j
        if real is not None:
            rho = rho.masked_fill(~real, 0.0)
        plan = E * (col / s_row).unsqueeze(-1)
        ctx.mu, ctx.eps = mu, eps
        ctx.save_for_backward(rho, plan, countf)
        return rho, plan

    @staticmethod
    def backward(ctx, g_rho, g_plan):
        rho, plan, countf = ctx.saved_tensors
        mu, eps = ctx.mu, ctx.eps
        if g_rho is None and g_plan is None:
            return None, None, None, None, None, None, None
        n = countf.unsqueeze(1)
        G_rho = rho * g_rho if g_rho is not None else torch.zeros_like(rho)
        if g_plan is not None:
            G_pi = plan * g_plan
            q = G_rho + G_pi.sum(-1)
        else:
            G_pi = None
            q = G_rho
        eta = G_rho.sum(1, keepdim=True) - n * (q * rho).sum(1, keepdim=True)
        den = 1.0 - mu - n * (rho * rho).sum(1, keepdim=True)
        kappa = torch.where(den.abs() > torch.finfo(den.dtype).tiny, -eta / den, torch.zeros_like(den))
        # dL/dc = -eps (G_pi - n pi (q + kappa rho))
        coef = (eps * n * (q + kappa * rho)).unsqueeze(-1)
        if G_pi is None:
            grad = plan * coef
        else:
            grad = G_pi.mul_(-eps).addcmul_(plan, coef)
        return grad, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


class _no_autocast:
    """Disable autocast for the block (the solvers run in at least float32)."""

    def __init__(self, device_type: str):
        self.device_type = device_type if device_type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        self._ctx = None

    def __enter__(self):
        self._ctx = torch.autocast(device_type=self.device_type, enabled=False)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"an object of type {type(x).__name__}"


def check_solver_args(mu, eps, solver: str, iters) -> None:
    """Validate the scalar arguments shared by :func:`partial_transport` and :class:`GSP`."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not (0.0 < float(mu) <= 1.0):
        raise InputError(f"mu must be a number in (0, 1] (the transported mass ratio), got {mu!r}")
    if (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(float(eps))
            or float(eps) <= 0.0):
        raise InputError(f"eps must be a finite number > 0 (the entropy-smoothing weight), got {eps!r}")
    if solver not in SOLVERS:
        raise InputError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise InputError(f"iters must be an integer >= 1 (fixed-point iterations), got {iters!r}")


def _prepare_mask(mask: Optional[Tensor], B: int, n: int, device) -> tuple[Optional[Tensor], Tensor]:
    if mask is None:
        return None, torch.full((B,), n, dtype=torch.long, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, n):
        raise InputError(
            f"mask must be a bool tensor of shape (B, n) = {(B, n)} with True for real features, got "
            f"{_describe(mask)}"
        )
    mask = mask.to(device)
    count = mask.sum(1)
    if bool((count == 0).any()):
        bad = torch.nonzero(count == 0).flatten().tolist()
        raise InputError(f"mask marks no real feature in sample(s) {bad}; every sample needs at least one")
    return mask, count


def solve_t(ct: Tensor, mu: float, eps: float, *, solver: str = "exact", iters: int = 100,
            mask: Optional[Tensor] = None, with_plan: bool = True,
            cost_bound: Optional[float] = None):
    """Solve from a (B, n, m) cost without validation (used by :class:`GSP` and the benchmark).

    Returns ``(weights (B, n), rho (B, n), marginals (B, m), plan (B, n, m) or None)``; with the
    fixed-point solver the plan is always returned (it is needed for the marginals).
    ``mask`` must already be a validated bool (B, n) tensor or None. ``cost_bound`` (e.g. 2 for
    normalised L2 costs) lets the solver skip the per-row max-shift when ``exp(-eps c)`` cannot
    underflow.
    """
    B, n, _ = ct.shape
    count = None
    if mask is not None:
        count = mask.sum(1)
        ct = ct.masked_fill(~mask.unsqueeze(-1), 0.0)
    shift = _needs_shift(ct.dtype, float(eps), cost_bound)
    if solver == "exact":
        return _ExactTransport.apply(ct, mask, count, float(mu), float(eps), with_plan, shift)
    if count is None:
        count = torch.full((B,), n, dtype=torch.long, device=ct.device)
    rho, plan = _FixedPointTransport.apply(ct, mask, count, float(mu), float(eps), int(iters), shift)
    inv_n = (1.0 / count.to(ct.dtype)).unsqueeze(1)
    weights = (inv_n - rho) / mu
    if mask is not None:
        weights = weights * mask
    marginals = plan.sum(1) / mu
    return weights, rho, marginals, plan


def partial_transport(cost: Tensor, mu: float, eps: float, *, solver: str = "exact", iters: int = 100,
                      mask: Optional[Tensor] = None) -> TransportResult:
    """Solve GSP's entropy-smoothed partial transport problem for a batch of cost matrices.

    Args:
        cost: (B, m, n) cost between m prototypes and n features (e.g. from :func:`prototype_cost`).
        mu: transported mass ratio in (0, 1]; ``mu = 1`` transports everything (GAP weights).
        eps: entropy-smoothing weight > 0 (the kernel is ``exp(-eps c)``; larger = sharper).
        solver: ``"exact"`` (closed form + Newton root, exact gradients) or ``"fixed_point"``
            (the paper's Prop. 4.2 iteration with the Prop. 4.3 backward).
        iters: number of fixed-point iterations (``solver="fixed_point"`` only; paper: 100).
        mask: optional (B, n) bool, True for real features; padded features get zero weight/plan.

    Returns:
        :class:`TransportResult` ``(rho, plan, weights, marginals)``. Half-precision costs (or calls
        under autocast) are solved in float32 and return float32; float32/float64 are kept.

    Example:
        >>> cost = torch.rand(2, 4, 10)
        >>> res = partial_transport(cost, mu=0.3, eps=5.0)
        >>> res.weights.sum(-1)  # tensor([1., 1.])
    """
    if not isinstance(cost, Tensor) or cost.dim() != 3:
        raise InputError(f"cost must be a (B, m, n) tensor, got {_describe(cost)}")
    if not cost.is_floating_point():
        raise InputError(f"cost must be a floating-point tensor, got dtype {cost.dtype}")
    B, m, n = cost.shape
    if B == 0 or m == 0 or n == 0:
        raise InputError(f"cost must have B, m, n >= 1, got shape {tuple(cost.shape)}")
    check_solver_args(mu, eps, solver, iters)
    mask, _ = _prepare_mask(mask, B, n, cost.device)
    if not bool(torch.isfinite(cost if mask is None else cost.transpose(1, 2)[mask]).all()):
        raise InputError("cost contains NaN or infinite values (at real, unmasked features)")
    dtype = cost.dtype if cost.dtype in (torch.float32, torch.float64) else torch.float32
    with _no_autocast(cost.device.type):
        ct = cost.to(dtype).transpose(1, 2)
        weights, rho, marginals, plan = solve_t(ct, mu, eps, solver=solver, iters=iters, mask=mask,
                                                with_plan=True)
    return TransportResult(rho=rho, plan=plan.transpose(1, 2), weights=weights, marginals=marginals)
