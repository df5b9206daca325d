"""The exact solver: GSP's closed form with a safeguarded Newton root, and its exact backward.

With ``a_j = logsumexp_i(-eps c_ij)`` and ``sigma_j = sigmoid(a_j + u)`` the optimum is

    rho_j = (1 - sigma_j) / n,   p_j = sigma_j / (n mu),   pi_ij = softmax_i(-eps c_ij) sigma_j / n,

where the scalar ``u`` is the unique root of the increasing function ``mean_j sigmoid(a_j + u) - mu``.
The root is found by a bracketed, safeguarded Newton iteration in float64 (quadratic convergence,
typically 1-6 steps to the resolution of the dtype); everything is computed in the log domain, so the solver is
finite and accurate for any ``eps`` (tested up to 100). The backward pass is the exact derivative of
this closed form, with the implicit derivative ``du/da_j = -sigma_j (1 - sigma_j) / sum_k sigma_k (1 -
sigma_k)`` of the root; it never differentiates through Newton steps and keeps no per-iteration state.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from gspdml.pooling.transport import runtime
from gspdml.pooling.transport.kernel import gibbs_kernel

__all__ = ["exact_transport"]

_NEWTON_MAX_ITERS = 100


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
    on_cpu = a.device.type == "cpu" and runtime.CPU_FAST_PATHS
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
        sums_buffer = torch.empty((2, B), dtype=torch.float64)
        sum_out, norm_out = sums_buffer[0], sums_buffer[1]
        sums = sums_buffer.numpy()
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
    def forward(ctx, cost_nm: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                eps: float, with_plan: bool, shift: bool):
        ctx.set_materialize_grads(False)
        dtype = cost_nm.dtype
        E, s, a = gibbs_kernel(cost_nm, eps, shift)  # P = E / s: softmax over prototypes
        a = a.double()
        if real is not None:
            a = a.masked_fill_(~real, -math.inf)
        resolution = 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24
        u = _solve_root(a, count, mu, real is not None, resolution)
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



def exact_transport(cost_nm: Tensor, real: Optional[Tensor], count: Optional[Tensor], mu: float,
                    eps: float, with_plan: bool, shift: bool):
    """Exact solution for a (B, n, m) cost (points first, padded rows already finite).

    ``real``: bool (B, n) or None; ``count``: real features per sample (None without padding).
    Returns ``(weights (B, n), rho (B, n), marginals (B, m), plan (B, n, m) or None)``.
    """
    return _ExactTransport.apply(cost_nm, real, count, mu, eps, with_plan, shift)
