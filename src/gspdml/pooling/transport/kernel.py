"""The Gibbs kernel ``exp(-eps c)`` shared by the exact and the fixed-point solver."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["gibbs_kernel", "needs_shift"]

_LOG2E = 1.0 / math.log(2.0)


def gibbs_kernel(cost_nm: Tensor, eps: float, shift: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Column-scaled kernel ``E_ji = exp(-eps (c_ji - shift_j))`` of a (B, n, m) cost (points
    first, prototypes last), its row sums ``s`` (B, n) and ``a = logsumexp_i(-eps c_ji)`` (B, n).

    ``softmax_i(-eps c) = E / s`` is never materialised: the solvers fold ``1/s`` into their
    per-feature vectors, which saves a full pass over the (B, n, m) tensor. ``shift=False`` skips
    the per-row max-shift; only valid when ``eps * c`` cannot underflow (see :func:`needs_shift`).
    """
    # exp(x) as exp2(x log2(e)): the same rounding of the scaled argument, and exp2 is a cheaper
    # vectorised kernel on CPU (about 2x here)
    scale = eps * _LOG2E
    if shift:
        cmin = cost_nm.amin(-1, keepdim=True)
        E = torch.sub(cmin, cost_nm).mul_(scale).exp2_()
    else:
        E = torch.mul(cost_nm, -scale).exp2_()
    s = E.sum(-1)
    a = torch.log(s)
    if shift:
        a = a - eps * cmin.squeeze(-1)
    return E, s, a


def needs_shift(dtype: torch.dtype, eps: float, cost_bound: Optional[float]) -> bool:
    """Whether :func:`gibbs_kernel` needs its max-shift: costs up to ``cost_bound`` (None: any)
    could make ``exp(-eps c)`` underflow in ``dtype``."""
    if cost_bound is None:
        return True
    limit = 600.0 if dtype == torch.float64 else 75.0  # exp(-limit) well inside the normal range
    return eps * cost_bound > limit
