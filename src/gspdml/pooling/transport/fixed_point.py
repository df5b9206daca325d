"""The paper's fixed-point solver (Prop. 4.2 of Gurbuz et al.) with its closed-form backward (Prop. 4.3).

Start ``t = 1``; ``rho = (1/n) / (1 + t s)``, ``t = mu / (s . rho)`` with ``s_j = sum_i exp(-eps c_ij)``,
run for ``iters`` steps (with ``s`` rescaled per sample, which leaves the iterates unchanged and
avoids overflow at large ``eps``). The backward of Prop. 4.3 assumes a converged point. This is a
faithful reproduction of the paper's layer; it converges linearly and can be far from the optimum
after 100 steps when features cluster tightly around prototypes at large ``eps``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gspdml.pooling.transport.kernel import gibbs_kernel

__all__ = ["fixed_point_transport"]


class _FixedPointTransport(torch.autograd.Function):
    """Prop. 4.2 for ``iters`` steps, Prop. 4.3 backward. Outputs rho (B, n) and plan (B, n, m)."""

    @staticmethod
    def forward(ctx, cost_nm: Tensor, real: Optional[Tensor], count: Tensor, mu: float, eps: float,
                iters: int, shift: bool):
        ctx.set_materialize_grads(False)
        E, s_row, a = gibbs_kernel(cost_nm, eps, shift)  # a_j = log s_j = log sum_i K_ij
        countf = count.to(cost_nm.dtype)
        inv_n = countf.reciprocal().unsqueeze(1)
        if real is not None:
            a = a.masked_fill(~real, -math.inf)
        # The iteration is invariant to rescaling s -> s / c, t -> t c: scale s by its per-sample
        # max so that nothing overflows at any eps (the iterates are the paper's, t = t~ / c).
        a_max = a.amax(1, keepdim=True)
        s_sc = (a - a_max).exp_()
        t = a_max.exp()  # t^(0) = 1, rescaled; (B, 1)
        one = torch.ones((), dtype=cost_nm.dtype, device=cost_nm.device)
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



def fixed_point_transport(cost_nm: Tensor, real: Optional[Tensor], count: Tensor, mu: float,
                          eps: float, iters: int, shift: bool):
    """``iters`` fixed-point steps for a (B, n, m) cost (points first, padded rows already finite).

    ``real``: bool (B, n) or None; ``count``: real features per sample. Returns
    ``(rho (B, n), plan (B, n, m))``.
    """
    return _FixedPointTransport.apply(cost_nm, real, count, mu, eps, iters, shift)
