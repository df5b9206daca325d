"""The entry points: :func:`partial_transport` (validated, public layout) and
:func:`solve_points_first` (unvalidated, the solvers' (B, n, m) layout).

Padding: ``mask`` (B, n), True for real features. Padded features get zero weight, zero residual
and zero plan, and the real ones are exactly the solution for the unpadded set (n = number of real
features of that sample).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from gspdml.pooling.transport.checks import check_cost, check_cost_finite, check_mask, check_solver_args
from gspdml.pooling.transport.exact import exact_transport, spread_bound
from gspdml.pooling.transport.fixed_point import fixed_point_transport
from gspdml.pooling.transport.kernel import needs_shift
from gspdml.pooling.transport.runtime import is_tracing, no_autocast

__all__ = ["TransportResult", "solve_points_first", "partial_transport", "UNKNOWN_COST_RANGE"]

#: The cost range the exact solver budgets for when it is neither given (``cost_bound``) nor
#: readable from the data (under ``torch.compile`` / ``torch.export``): costs spanning more than
#: this (times eps) would need more root steps than budgeted.
UNKNOWN_COST_RANGE = 1.0e4


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


def solve_points_first(cost_nm: Tensor, mu: float, eps: float, *, solver: str = "exact",
                       iters: int = 100, mask: Optional[Tensor] = None, with_plan: bool = True,
                       cost_bound: Optional[float] = None, cost_range: Optional[float] = None):
    """Solve from a (B, n, m) cost (points first) without validation (used by :class:`GSP`).

    Returns ``(weights (B, n), rho (B, n), marginals (B, m), plan (B, n, m) or None)``; with the
    fixed-point solver the plan is always returned (it is needed for the marginals).
    ``mask`` must already be a validated bool (B, n) tensor or None. ``cost_bound`` (e.g.
    :data:`~gspdml.pooling.transport.cost.COST_BOUND` for GSP's costs: costs lie in
    ``[0, cost_bound]``) lets the solver skip the per-row max-shift when ``exp(-eps c)`` cannot
    underflow and fixes the exact solver's root budget without looking at the data; without it
    the width of the costs' range is ``cost_range`` when given, else read from the costs (eager)
    or :data:`UNKNOWN_COST_RANGE` (traced).
    """
    B, n, m = cost_nm.shape
    count = None
    if mask is not None:
        count = mask.sum(1)
        cost_nm = cost_nm.masked_fill(~mask.unsqueeze(-1), 0.0)
    shift = needs_shift(cost_nm.dtype, float(eps), cost_bound)
    if solver == "exact":
        if cost_bound is not None:
            cost_range = float(cost_bound)
        elif cost_range is not None:
            cost_range = float(cost_range)
        elif is_tracing():
            cost_range = UNKNOWN_COST_RANGE
        else:  # eager: read the range off the costs (one host read; partial_transport validates anyway)
            lo_hi = torch.stack([cost_nm.amin(), cost_nm.amax()]).detach().double().tolist()
            cost_range = lo_hi[1] - lo_hi[0]
        width = spread_bound(float(eps), cost_range, m)
        return exact_transport(cost_nm, mask, count, float(mu), float(eps), with_plan, shift, width)
    if count is None:
        count = torch.full((B,), n, dtype=torch.long, device=cost_nm.device)
    rho, plan = fixed_point_transport(cost_nm, mask, count, float(mu), float(eps), int(iters), shift)
    inv_n = (1.0 / count.to(cost_nm.dtype)).unsqueeze(1)
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
    check_cost(cost)
    B, m, n = cost.shape
    check_solver_args(mu, eps, solver, iters)
    mask = check_mask(mask, B, n, cost.device)
    lo_hi = check_cost_finite(cost, mask)  # (min, max) of the real costs: the root's budget
    dtype = cost.dtype if cost.dtype in (torch.float32, torch.float64) else torch.float32
    with no_autocast(cost.device.type):
        cost_nm = cost.to(dtype).transpose(1, 2)
        weights, rho, marginals, plan = solve_points_first(
            cost_nm, mu, eps, solver=solver, iters=iters, mask=mask, with_plan=True,
            cost_range=None if lo_hi is None else max(lo_hi[1], 0.0) - min(lo_hi[0], 0.0))
    return TransportResult(rho=rho, plan=plan.transpose(1, 2), weights=weights, marginals=marginals)
