"""Argument and input checks of the transport problem (every message names what was wrong)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from gspdml.errors import InputError

__all__ = [
    "SOLVERS",
    "describe",
    "check_solver_args",
    "check_cost",
    "check_mask",
    "check_cost_finite",
    "check_features_and_prototypes",
]

SOLVERS = ("exact", "fixed_point")


def describe(x) -> str:
    """``x`` in an error message: its shape and dtype for a tensor, else its type."""
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


def check_cost(cost) -> None:
    """A (B, m, n) floating-point cost with B, m, n >= 1 (prototypes-first layout)."""
    if not isinstance(cost, Tensor) or cost.dim() != 3:
        raise InputError(f"cost must be a (B, m, n) tensor, got {describe(cost)}")
    if not cost.is_floating_point():
        raise InputError(f"cost must be a floating-point tensor, got dtype {cost.dtype}")
    if 0 in cost.shape:
        raise InputError(f"cost must have B, m, n >= 1, got shape {tuple(cost.shape)}")


def check_mask(mask: Optional[Tensor], B: int, n: int, device) -> Optional[Tensor]:
    """``mask`` as a bool (B, n) tensor on ``device`` (or None); every sample needs a real feature."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, n):
        raise InputError(
            f"mask must be a bool tensor of shape (B, n) = {(B, n)} with True for real features, got "
            f"{describe(mask)}"
        )
    mask = mask.to(device)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # value checks: eager only
        return mask
    count = mask.sum(1)
    if bool((count == 0).any()):
        bad = torch.nonzero(count == 0).flatten().tolist()
        raise InputError(f"mask marks no real feature in sample(s) {bad}; every sample needs at least one")
    return mask


def check_cost_finite(cost: Tensor, mask: Optional[Tensor]) -> Optional[tuple[float, float]]:
    """The (B, m, n) cost is finite at the real features (padding may hold anything).

    Returns the (min, max) of the real costs, read in the same single pass and host read, or
    None under ``torch.compile`` / ``torch.export`` (where the check is skipped: it reads values).
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    real = cost if mask is None else cost.masked_fill(~mask.unsqueeze(1), 0.0)
    lo, hi = torch.stack(torch.aminmax(real.detach())).double().tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("cost contains NaN or infinite values (at real, unmasked features)")
    return lo, hi


def check_features_and_prototypes(features, prototypes) -> None:
    """(B, n, D) features and (m, D) prototypes, floating point, with the same D."""
    if not isinstance(features, Tensor) or features.dim() != 3:
        raise InputError(
            f"prototype_cost: features must be a (B, n, D) tensor, got {describe(features)}"
        )
    if not isinstance(prototypes, Tensor) or prototypes.dim() != 2:
        raise InputError(
            f"prototype_cost: prototypes must be an (m, D) tensor, got {describe(prototypes)}"
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
