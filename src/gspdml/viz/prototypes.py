"""Per-class prototype histograms (paper Fig. 5): which prototypes each class's mass goes to.

One small bar chart per class of the class's mean prototype marginal ``z̄_c`` (the "attribute
histogram"); the dominant prototype's bar is drawn in that prototype's colour and the others in
grey, so shared (transferable) prototypes are visible at a glance. Prototype colours come from
:func:`prototype_colors` and match :func:`gspdml.viz.weights.plot_weight_maps` when it colours
locations by their dominant prototype.

Plots are written with matplotlib's object API (:func:`gspdml.viz.figure.save_figure`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gspdml.errors import InputError
from gspdml.viz.figure import save_figure

__all__ = ["prototype_colors", "plot_prototype_histograms"]


def prototype_colors(num_prototypes: int) -> np.ndarray:
    """A fixed RGBA colour per prototype index, shape (m, 4) (tab10 / tab20 without greys, else turbo)."""
    from matplotlib import colormaps

    m = int(num_prototypes)
    if m < 1:
        raise InputError(f"num_prototypes must be >= 1; got {num_prototypes!r}")
    # qualitative palettes without their greys (grey marks the non-dominant bars)
    for name, greys in (("tab10", (7,)), ("tab20", (14, 15))):
        rgb = np.asarray(colormaps[name].colors, dtype=np.float64)[:, :3]
        rgb = np.delete(rgb, greys, axis=0)
        if m <= len(rgb):
            return np.concatenate([rgb[:m], np.ones((m, 1))], axis=1)
    return colormaps["turbo"](np.linspace(0.05, 0.95, m))


def plot_prototype_histograms(
    z_per_class,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int | None = None,
) -> Path:
    """Write a PNG grid with one bar chart per class of its mean prototype marginals.

    Args:
        z_per_class: (C, m) array, row ``c`` = mean prototype marginal of class ``c`` (e.g. from
            :func:`gspdml.analysis.zeroshot.class_means` of the marginals).
        path: output ``.png`` file (folders are created).
        class_names: optional C labels for the panel titles (default ``class <i>``).
        title: optional figure title.
        ncols: panels per row (default: up to 5).

    Returns the written path.
    """
    from matplotlib.figure import Figure

    z = np.asarray(z_per_class.detach().cpu() if hasattr(z_per_class, "detach") else z_per_class, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise InputError(f"z_per_class must be a (classes, prototypes) array; got shape {z.shape}")
    if not np.isfinite(z).all():
        raise InputError("z_per_class contains NaN or inf values")
    num_classes, m = z.shape
    if class_names is None:
        class_names = [f"class {i}" for i in range(num_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise InputError(f"class_names has {len(class_names)} entries for {num_classes} classes")
    ncols = int(ncols or min(num_classes, 5))
    nrows = math.ceil(num_classes / ncols)
    colors = prototype_colors(m)
    grey = np.array([0.8, 0.8, 0.8, 1.0])
    ymax = max(float(z.max()) * 1.1, 1e-6)

    fig = Figure(figsize=(max(2.2 * ncols, 4.0), 1.9 * nrows + (0.5 if title else 0.2)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    x = np.arange(m)
    for c in range(nrows * ncols):
        ax = axes[c // ncols][c % ncols]
        if c >= num_classes:
            ax.set_axis_off()
            continue
        dominant = int(np.argmax(z[c]))
        bar_colors = np.tile(grey, (m, 1))
        bar_colors[dominant] = colors[dominant]
        ax.bar(x, z[c], color=bar_colors, width=0.85)
        ax.set_title(f"{class_names[c]} (p{dominant})", fontsize=8)
        ax.set_ylim(0, ymax)
        ax.tick_params(labelsize=6)
        step = max(1, m // 8)
        ax.set_xticks(x[::step])
        if c % ncols == 0:
            ax.set_ylabel("mean z", fontsize=7)
        if c // ncols == nrows - 1 or c + ncols >= num_classes:
            ax.set_xlabel("prototype", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
