"""Prototype assignments over images (paper Fig. 5): each location coloured by the prototype that
dominates its transport (computed by :mod:`gspdml.analysis.assignments`).

:func:`plot_assignments` overlays the dominant-prototype map on the images (opacity growing with the weight) with a
legend of the prototype colours (:func:`gspdml.viz.prototypes.prototype_colors`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gspdml.errors import InputError

__all__ = ["plot_assignments", "figure_size"]

#: figure layout (inches): panel side, legend column width, title band
PANEL_IN, LEGEND_IN, TITLE_IN = 1.6, 1.5, 0.35


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
