"""Prototype assignments over images (paper Fig. 5): each location coloured by the prototype that
dominates its transport.

GSP transports mass ``pi_ij`` from location ``j`` to prototype ``i`` (the plan of
:func:`gspdml.pooling.transport.partial_transport`); the layer's ``return_details`` gives the
weights, marginals and residual but not the plan, so :func:`transport_plans` solves the same
problem again from the GSP layer's input features and prototypes. :func:`dominant_assignments`
takes ``argmax_i pi_ij`` per location and masks (``-1``) the locations the pooling does not select:
relative weight ``n · p_j`` below ``min_weight`` (1 = the uniform weight GAP gives every location).
:func:`plot_assignments` overlays the result on the images (opacity growing with the weight) with a
legend of the prototype colours (:func:`gspdml.viz.prototypes.prototype_colors`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gspdml.errors import InputError

__all__ = ["transport_plans", "dominant_assignments", "plot_assignments", "figure_size"]

#: figure layout (inches): panel side, legend column width, title band
PANEL_IN, LEGEND_IN, TITLE_IN = 1.6, 1.5, 0.35


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


def figure_size(num_images: int, ncols: int | None = None, title: bool = True, dpi: int = 120) -> tuple[int, int]:
    """The (width, height) in pixels of :func:`plot_assignments`' PNG."""
    ncols = int(ncols or min(num_images, 8))
    nrows = math.ceil(num_images / ncols)
    width = ncols * PANEL_IN + LEGEND_IN
    height = nrows * PANEL_IN + (TITLE_IN if title else 0.0)
    return round(width * dpi), round(height * dpi)


def plot_assignments(images, dominant, weights, path: str | os.PathLike, *, num_prototypes: int,
                     titles: Sequence[str] | None = None, ncols: int | None = None, alpha: float = 0.75,
                     title: str | None = None, dpi: int = 120) -> Path:
    """Write a PNG grid: each image with its locations coloured by their dominant prototype.

    Args:
        images: (N, H, W, 3) or (N, H, W) floats in [0, 1] (or uint8).
        dominant: (N, h, w) prototype index per location, ``-1`` = not selected (transparent);
            see :func:`dominant_assignments`. ``H, W`` must be multiples of ``h, w``.
        weights: (N, h, w) pooling weights: the opacity is ``alpha x`` the weight relative to the
            image's largest.
        num_prototypes: number of prototypes (legend entries and colours).
        titles: optional N panel titles; ncols: panels per row (default up to 8).

    The figure measures :func:`figure_size` pixels. Returns the written path.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from gspdml.viz.figure import save_figure
    from gspdml.viz.prototypes import prototype_colors

    im = np.asarray(images)
    im = im.astype(np.float64) / 255.0 if im.dtype == np.uint8 else im.astype(np.float64)
    dom = np.asarray(dominant)
    wt = np.asarray(weights, dtype=np.float64)
    if im.ndim not in (3, 4) or len(im) == 0:
        raise InputError(f"images must be a non-empty (N, H, W[, 3]) array; got shape {im.shape}")
    if dom.ndim != 3 or not np.issubdtype(dom.dtype, np.integer) or wt.shape != dom.shape or len(dom) != len(im):
        raise InputError(f"dominant must be an integer (N, h, w) array shaped like weights for {len(im)} images; "
                         f"got {dom.shape} {dom.dtype} and weights {wt.shape}")
    m = int(num_prototypes)
    if dom.max() >= m or dom.min() < -1:
        raise InputError(f"dominant holds values outside -1..{m - 1}")
    height, width = im.shape[1:3]
    h, w = dom.shape[1:]
    if height % h or width % w:
        raise InputError(f"image size {(height, width)} is not a multiple of the map size {(h, w)}")
    if not 0 < alpha <= 1:
        raise InputError(f"alpha must be in (0, 1]; got {alpha!r}")
    if titles is not None and len(titles) != len(im):
        raise InputError(f"titles has {len(titles)} entries for {len(im)} images")
    colors = prototype_colors(m)
    n_img = len(im)
    ncols = int(ncols or min(n_img, 8))
    nrows = math.ceil(n_img / ncols)
    fig_w, fig_h = (s / dpi for s in figure_size(n_img, ncols, bool(title), dpi))
    fig = Figure(figsize=(fig_w, fig_h))
    top = TITLE_IN if title else 0.0
    pad = 0.06
    for i in range(n_img):
        r, c = divmod(i, ncols)
        ax = fig.add_axes(((c * PANEL_IN + pad) / fig_w, 1 - (top + (r + 1) * PANEL_IN - pad) / fig_h,
                           (PANEL_IN - 2 * pad) / fig_w, (PANEL_IN - 2 * pad - (0.18 if titles is not None else 0)) / fig_h))
        ax.set_axis_off()
        ax.imshow(im[i], cmap="gray" if im.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
        up = np.kron(dom[i], np.ones((height // h, width // w), dtype=np.int64))
        rel = np.kron(wt[i] / max(float(wt[i].max()), 1e-12), np.ones((height // h, width // w)))
        rgba = colors[np.clip(up, 0, None)].copy()
        rgba[..., 3] = np.where(up >= 0, alpha * np.clip(rel, 0.25, 1.0), 0.0)
        ax.imshow(rgba, interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    handles = [Patch(facecolor=colors[k], label=f"prototype {k}") for k in range(m)]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False, title="dominant", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig_h, va="top")
    return save_figure(fig, path, dpi=dpi)
