"""The exact solver: GSP's closed form with a bracketed Newton root, and its exact backward.

With ``a_j = logsumexp_i(-eps c_ij)`` and ``sigma_j = sigmoid(a_j + u)`` the optimum is

    rho_j = (1 - sigma_j) / n,   p_j = sigma_j / (n mu),   pi_ij = softmax_i(-eps c_ij) sigma_j / n,

where the scalar ``u`` is the unique root of the increasing function
``F(u) = sum_j sigmoid(a_j + u) - mu n``. Everything is computed in the log domain, so the
solver is finite and accurate for any ``eps`` (tested from 1e-3 to 1e3). The backward pass is
the exact derivative of this closed form, with the implicit derivative ``du/da_j = -sigma_j (1 -
sigma_j) / sum_k sigma_k (1 - sigma_k)`` of the root; it never differentiates through the root
iteration and keeps no per-iteration state.

The root: a fixed number of steps, in torch on the tensor's device
---------------------------------------------------------------------
The root is computed with torch operations on the tensor's device with a step count fixed on
the host before the call (no ``.item()``, no NumPy, no host synchronisation, one code path for
CPU and CUDA; the same graph under ``torch.compile`` / ``torch.export``). The budget follows from
two facts.

1. *The bracket.* Some sigmoid must be >= mu and some <= mu at the root, so the root lies in
   ``[logit(mu) - max_j a_j, logit(mu) - min_j a_j]``, whose width is the spread of ``a``.
   ``a_j`` lies in ``[-eps max_i c_ij, log m - eps min_i c_ij]``, so for costs in a range of
   width ``C`` the spread is at most ``W = eps C + log m`` (GSP's costs: ``C = 2``, see
   ``COST_BOUND``), a number known on the host. ``ceil(log2 W)`` bisection steps bring the
   bracket to width <= 1, and its midpoint has error ``|u_0 - u*| <= 1/2``.
2. *Quadratic convergence from there, with a global constant.* For a sum of sigmoids
   ``|F''| <= F'`` (``|sigma (1 - sigma)(1 - 2 sigma)| <= sigma (1 - sigma)``), so ``log F'`` is
   1-Lipschitz and ``F'(t) / F'(u)`` lies in ``[exp(-|t - u|), exp(|t - u|)]``. Writing the
   Newton error as an integral of ``1 - F'(t) / F'(u)`` gives, for any error ``e``,
   ``|e_next| <= g(|e|) = exp(|e|) - 1 - |e|`` (~ ``e^2 / 2``). From ``|e_0| <= 1/2`` the bound runs
   1.5e-1, 1.2e-2, 6.8e-5, 2.3e-9, 2.7e-18: **5 Newton steps reach float64 resolution (2^-53)
   and 4 reach float32's (2^-24)**, the resolution of the outputs' dtype (the inputs ``a`` carry
   that much error already). Each Newton step is clamped into the last bracket, which can only
   reduce the error and keeps rounding from throwing the iterate out where ``F`` is flat (where
   ``F'`` is below rounding, every point of the bracket gives the same outputs).
So at ``eps = 5`` (m = 64: W = 14.2) the root costs 4 bisection and 4 (float32) or 5 (float64)
Newton steps, at ``eps = 1000`` 11 and 5. The relative error of every ``sigma_j`` is at most the
error in ``u``. :func:`root_schedule` computes the schedule; tests check it against the previous
(adaptive, NumPy-driven) solver and plain bisection over extreme ``eps``, ``mu`` and clustered or padded inputs.

``F'`` is computed as ``sum sigma - sum sigma^2`` (one sigmoid per step); its cancellation
matters only where ``F'`` is ~1e-8 of ``F`` or less, i.e. where ``F`` is flat. For ``mu > 1/2``
the residual and ``F'`` are taken from the complements ``sigmoid(-(a_j + u))`` (no cancellation
as the sigmoids approach 1).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gspdml.pooling.transport.kernel import gibbs_kernel
from gspdml.pooling.transport.runtime import apply_function

__all__ = ["exact_transport", "root_schedule", "spread_bound"]


def _newton_error_bound(e: float) -> float:
    """Error after one Newton step from error ``e``: ``exp(e) - 1 - e`` (see the module docstring)."""
    return math.expm1(e) - e


def root_schedule(width: float, resolution: float) -> tuple[int, int]:
    """The root's fixed step budget for a bracket of width <= ``width``: ``(bisection steps,
    Newton steps)`` such that the error in ``u`` is <= ``resolution`` (module docstring)."""
    bisections = max(0, math.ceil(math.log2(max(float(width), 1.0)) - 1e-12))
    e, steps = 0.5, 0
    while e > resolution:
        e, steps = _newton_error_bound(e), steps + 1
    return bisections, steps


def spread_bound(eps: float, cost_range: float, m: int) -> float:
    """Upper bound ``eps C + log m`` on the spread of ``a`` (the bracket width) for costs in a
    range of width ``C`` (module docstring)."""
    return float(eps) * float(cost_range) + math.log(m)


def _solve_root(a: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                width: float, resolution: float = 2.0 ** -53) -> Tensor:
    """Root ``u`` (B,) of ``sum_j sigmoid(a_j + u) = mu * count_b``; ``a`` float64 (B, n) with
    ``-inf`` at padded features (``real`` False), ``count`` the real features per sample (None:
    all n are real), ``width`` a host-side bound on the spread of ``a`` over the real features.

    Bisection then Newton steps, counts fixed by :func:`root_schedule` (module docstring).
    """
    B, n = a.shape
    if mu >= 1.0:
        return torch.full((B,), math.inf, dtype=torch.float64, device=a.device)
    logit_mu = math.log(mu) - math.log1p(-mu)
    if real is None:
        cnt = float(n)
        a_min = a.amin(1)
    else:
        cnt = count.to(torch.float64)
        a_min = a.masked_fill(~real, math.inf).amin(1)
    lo = logit_mu - a.amax(1)
    hi = logit_mu - a_min
    # residual r(u), increasing in u: sum sigma - mu n, or for mu > 1/2 (1 - mu) n - sum (1 - sigma)
    complement = mu > 0.5
    target = (1.0 - mu) * cnt if complement else mu * cnt
    real_f = None if real is None else real.to(torch.float64)
    bisections, steps = root_schedule(width, resolution)

    def sigmoids(u: Tensor) -> Tensor:  # sigma (or 1 - sigma) at u, (B, n)
        x = a + u.unsqueeze(1)
        s = (x.neg_() if complement else x).sigmoid_()
        return s.mul_(real_f) if complement and real_f is not None else s  # 1 - sigma is 1 at padding

    mid = (lo + hi) * 0.5
    for _ in range(bisections):
        total = sigmoids(mid).sum(1)
        below = total > target if complement else total < target  # r(mid) < 0: root above mid
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        mid = (lo + hi) * 0.5
    u = mid
    for _ in range(steps):  # Newton, clamped into the bracket
        s = sigmoids(u)
        total = s.sum(1)
        r = target - total if complement else total - target
        slope = (total - torch.linalg.vecdot(s, s)).clamp_min_(1e-300)  # F' = sum sigma (1 - sigma)
        u = torch.clamp(u - r / slope, lo, hi)
    return u


class _ExactTransport(torch.autograd.Function):
    """Closed-form GSP solution with its exact backward.

    Input: the cost in (B, n, m) layout (padded rows already finite). Outputs: weights p (B, n),
    rho (B, n), marginals z (B, m) and, when asked, the plan in (B, n, m) layout.

    ``a``, the root and the sigmoids are computed in float64 (then rounded once to the working
    dtype); the per-feature vectors the backward pass needs are prepared here once, so that the
    backward pass is a few vector operations plus two passes over the (B, n, m) kernel.
    """

    @staticmethod
    def forward(ctx, cost_nm: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                eps: float, with_plan: bool, shift: bool, width: float):
        ctx.set_materialize_grads(False)
        dtype = cost_nm.dtype
        E, s, a = gibbs_kernel(cost_nm, eps, shift)  # P = E / s: softmax over prototypes
        a = a.double()
        if real is not None:
            a = a.masked_fill_(~real, -math.inf)
        resolution = 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24
        u = _solve_root(a, real, count, mu, width, resolution)
        # 1/n: a number without padding, else (B, 1)
        inv_n = 1.0 / cost_nm.shape[1] if real is None else count.to(dtype).reciprocal_().unsqueeze(1)
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
            return None, None, None, None, None, None, None, None
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
        return grad, None, None, None, None, None, None, None



def exact_transport(cost_nm: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                    eps: float, with_plan: bool, shift: bool, width: float):
    """Exact solution for a (B, n, m) cost (points first, padded rows already finite).

    ``real``: bool (B, n) or None; ``count``: real features per sample (None without padding);
    ``width``: a host-side bound on the spread of ``a`` (:func:`spread_bound`), which fixes the
    root's step budget.
    Returns ``(weights (B, n), rho (B, n), marginals (B, m), plan (B, n, m) or None)``.
    """
    return apply_function(_ExactTransport, cost_nm, real, count, mu, eps, with_plan, shift, width)
