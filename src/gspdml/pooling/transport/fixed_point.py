"""The paper's fixed-point solver (Prop. 4.2 of Gurbuz et al.) with its closed-form backward (Prop. 4.3).

Start ``t = 1``; ``rho = (1/n) / (1 + t s)``, ``t = mu / (s . rho)`` with ``s_j = sum_i exp(-eps c_ij)``,
run for ``iters`` steps. The iterates are computed in the log domain: with ``l = log t`` and
``a_j = log s_j`` the update is ``l <- l + log mu - log q`` with ``q = mean_j sigmoid(l + a_j)``,
and ``rho_j = sigmoid(-(l + a_j)) / n``, so nothing overflows or underflows at any ``eps`` in
float32 (the linear-domain form returned NaN at eps >= 100 when a feature coincided with a
prototype). Only the first step (from ``t = 1``, where every sigmoid may underflow) needs a
logsumexp of log-sigmoids: after it ``q >= mu / 2n`` (the largest ``l + a_j`` is >= log mu), and
``q_(k+1) >= min(q_k, mu)`` (``sigmoid(x + d) >= e^d sigmoid(x)`` for ``d < 0``), so the later steps
take ``log`` of a plain sum of sigmoids. These are the paper's iterates, unchanged. At ``mu = 1`` the iteration has no
finite fixed point (``t`` grows without bound and after 100 steps the per-feature constraint is
still ~1 % off); the solver returns its limit, ``rho = 0`` and ``pi = softmax_i(-eps c) / n``, exactly.
The backward of Prop. 4.3 assumes a converged point. This is a faithful reproduction of the
paper's layer; it converges linearly and can be far from the optimum after 100 steps when
features cluster tightly around prototypes at large ``eps``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gspdml.pooling.transport.kernel import gibbs_kernel
from gspdml.pooling.transport.runtime import apply_function

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
        if mu >= 1.0:  # the limit t -> inf: everything is transported
            rho = torch.zeros_like(a)
            col = inv_n.expand_as(a) if real is None else inv_n * real.to(a.dtype)
        else:
            if real is not None:
                a = a.masked_fill(~real, -math.inf)
            # l = log t; t^(0) = 1. rho^(k) uses t^(k-1), the plan t^(k) and rho^(k) (as the paper)
            step = math.log(mu) + countf.log().unsqueeze(1)  # log mu + log n
            ell = torch.zeros_like(inv_n)
            prev = ell
            for k in range(iters):
                prev = ell
                if k == 0:  # from t = 1 every sigmoid may underflow: a logsumexp of log-sigmoids
                    ell = ell + step - torch.logsumexp(F.logsigmoid(ell + a), dim=1, keepdim=True)
                else:  # mean sigmoid >= min(mu, mu / 2n) from here on (module docstring): plain sums
                    ell = ell + step - torch.sigmoid(ell + a).sum(1, keepdim=True).log_()
            x = prev + a
            rho = torch.sigmoid(-x) * inv_n  # (1/n) / (1 + t s)
            col = torch.sigmoid(x) * (ell - prev).exp() * inv_n  # t^(k) s rho^(k)
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
    return apply_function(_FixedPointTransport, cost_nm, real, count, mu, eps, iters, shift)
