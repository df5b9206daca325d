"""Prototype assignments (paper Fig. 5): which prototype dominates each location's transport.

GSP transports mass ``pi_ij`` from location ``j`` to prototype ``i`` (the plan of
:func:`gspdml.pooling.transport.partial_transport`); the layer's ``return_details`` gives the
weights, marginals and residual but not the plan, so :func:`transport_plans` solves the same
problem again from the GSP layer's input features and prototypes. :func:`dominant_assignments`
takes ``argmax_i pi_ij`` per location and masks (``-1``) the locations the pooling does not select:
relative weight ``n · p_j`` below ``min_weight`` (1 = the uniform weight GAP gives every location).
:func:`gspdml.viz.assignments.plot_assignments` draws the result.
"""
from __future__ import annotations

import numpy as np
import torch

from gspdml.errors import InputError

__all__ = ["transport_plans", "dominant_assignments"]


def transport_plans(features: torch.Tensor, prototypes: torch.Tensor, mu: float, eps: float, *,
                    solver: str = "exact", iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """GSP's transport plan and pooling weights for ``features`` (N, C, h, w) (the GSP layer's input).

    Returns ``(plan (N, m, h, w), weights (N, h, w))`` as float64 arrays, from
    :func:`gspdml.pooling.transport.prototype_cost` and ``partial_transport``.
    """
    from gspdml.pooling.transport import partial_transport, prototype_cost

    f = torch.as_tensor(features).detach().cpu().double()
    w = torch.as_tensor(prototypes).detach().cpu().double()
    if f.ndim != 4:
        raise InputError(f"features must be a feature map (N, C, h, w); got shape {tuple(f.shape)}")
    if w.ndim != 2 or w.shape[1] != f.shape[1]:
        raise InputError(f"prototypes must be (m, {f.shape[1]}); got shape {tuple(w.shape)}")
    n_img, _, h, wd = f.shape
    result = partial_transport(prototype_cost(f.flatten(2).transpose(1, 2), w), mu, eps, solver=solver, iters=iters)
    plan = result.plan.reshape(n_img, w.shape[0], h, wd).numpy()
    return plan, result.weights.reshape(n_img, h, wd).numpy()


def dominant_assignments(plan, weights, min_weight: float = 1.0) -> np.ndarray:
    """``argmax`` of the plan (N, m, h, w) over prototypes per location, ``-1`` where the relative
    pooling weight ``n · p_j / sum(p)`` (``weights`` (N, h, w)) is below ``min_weight``. Returns
    an (N, h, w) int64 array."""
    p = np.asarray(plan, dtype=np.float64)
    wt = np.asarray(weights, dtype=np.float64)
    if p.ndim != 4 or wt.shape != (p.shape[0],) + p.shape[2:]:
        raise InputError(f"plan must be (N, m, h, w) and weights (N, h, w); got {p.shape} and {wt.shape}")
    if not (np.isfinite(p).all() and np.isfinite(wt).all()):
        raise InputError("plan and weights must be finite")
    if min_weight < 0:
        raise InputError(f"min_weight must be >= 0; got {min_weight!r}")
    n = wt.shape[1] * wt.shape[2]
    sums = wt.reshape(len(wt), -1).sum(1)
    if (sums <= 0).any():
        raise InputError(f"weights of sample(s) {np.flatnonzero(sums <= 0).tolist()} sum to zero")
    rel = wt * (n / sums)[:, None, None]
    dom = p.argmax(axis=1).astype(np.int64)
    dom[rel < min_weight] = -1
    return dom
