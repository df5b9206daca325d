"""2-D embedding geometry with class convex hulls (paper Fig. 3a).

:func:`project_2d` maps embeddings to the plane (unchanged when already 2-D, else PCA fitted on
the given points); :func:`plot_embedding_geometry` draws one or more panels (e.g. GAP next to
GSP), each with the points coloured by class and each class's convex hull
(``scipy.spatial.ConvexHull``). Overlapping hulls mean classes that the embedding does not
separate. :func:`hull_overlap` quantifies this: the fraction of points lying inside the hull of
another class, in the plotted 2-D view.

Plots use matplotlib's object API (:func:`gspdml.viz.figure.save_figure`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from gspdml.errors import InputError
from gspdml.viz.figure import save_figure

__all__ = ["project_2d", "class_hulls", "hull_overlap", "plot_embedding_geometry"]


def _as_array(name: str, x, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D array; got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf values")
    return x


def project_2d(embeddings) -> np.ndarray:
    """Embeddings (N, D) as 2-D points: unchanged when D == 2, else the first two PCA components."""
    x = _as_array("embeddings", embeddings, 2).astype(np.float64)
    if x.shape[1] < 2:
        raise InputError(f"embeddings need at least 2 dimensions for a 2-D plot; got shape {x.shape}")
    if x.shape[1] == 2:
        return x
    if x.shape[0] < 2:
        raise InputError(f"PCA to 2-D needs at least 2 points; got {x.shape[0]}")
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(x)


def class_hulls(points, labels) -> dict[int, np.ndarray]:
    """Convex hull vertices (closed polygon, (k+1, 2)) of each class's 2-D points.

    Classes with fewer than 3 points or collinear points get the polyline through their points.
    """
    from scipy.spatial import ConvexHull, QhullError

    pts = _as_array("points", points, 2)
    lab = _as_array("labels", labels, 1)
    if len(pts) != len(lab) or pts.shape[1] != 2:
        raise InputError(f"points must be (N, 2) with N = len(labels); got {pts.shape} and {lab.shape}")
    hulls: dict[int, np.ndarray] = {}
    for c in np.unique(lab):
        p = pts[lab == c]
        try:
            vertices = p[ConvexHull(p).vertices] if len(p) >= 3 else p
        except QhullError:  # collinear or duplicate points
            vertices = p[np.lexsort(p.T[::-1])]
        hulls[int(c)] = np.vstack([vertices, vertices[:1]])
    return hulls


def hull_overlap(points, labels) -> float:
    """Fraction of points that lie inside the convex hull of at least one *other* class (0 = clean)."""
    from matplotlib.path import Path as MplPath

    pts = _as_array("points", points, 2)
    lab = _as_array("labels", labels, 1)
    hulls = class_hulls(pts, lab)
    inside = np.zeros(len(pts), dtype=bool)
    for c, poly in hulls.items():
        if len(poly) < 4:  # not a polygon
            continue
        other = lab != c
        inside[other] |= MplPath(poly).contains_points(pts[other])
    return float(inside.mean()) if len(pts) else 0.0


def plot_embedding_geometry(
    panels: Mapping[str, tuple],
    path: str | os.PathLike,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    max_points_per_class: int | None = 200,
) -> Path:
    """Write a PNG with one panel per entry of ``panels`` (e.g. ``{"GAP": (emb, y), "GSP": ...}``).

    Each panel shows the embeddings projected to 2-D (:func:`project_2d`, done per panel), points
    coloured by class, and every class's convex hull, with the hull-overlap fraction in the
    panel title.

    Args:
        panels: name -> ``(embeddings (N, D), labels (N,))``.
        path: output ``.png`` file (folders are created).
        title: optional figure title.
        class_names: optional names indexed by label (legend).
        max_points_per_class: subsample each class for readability (``None``: all points; the
            hulls always use all points).

    Returns the written path.
    """
    from matplotlib.figure import Figure

    if not panels:
        raise InputError("plot_embedding_geometry: no panels to plot")
    prepared = []
    for name, value in panels.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InputError(f"panel {name!r} must be (embeddings, labels)")
        pts = project_2d(value[0])
        lab = _as_array(f"labels of panel {name!r}", value[1], 1).astype(np.int64)
        if len(pts) != len(lab):
            raise InputError(f"panel {name!r}: {len(pts)} embeddings but {len(lab)} labels")
        prepared.append((str(name), pts, lab))

    classes = np.unique(np.concatenate([lab for _, _, lab in prepared]))
    cmap_name = "tab10" if len(classes) <= 10 else "tab20"
    from matplotlib import colormaps

    cmap = colormaps[cmap_name]
    colors = {int(c): cmap(i % cmap.N) for i, c in enumerate(classes)}
    rng = np.random.default_rng(0)

    ncols = len(prepared)
    fig = Figure(figsize=(4.2 * ncols, 4.4 + (0.3 if title else 0.0)), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax, (name, pts, lab) in zip(axes, prepared):
        hulls = class_hulls(pts, lab)
        for c in np.unique(lab):
            sel = np.flatnonzero(lab == c)
            if max_points_per_class is not None and len(sel) > max_points_per_class:
                sel = rng.choice(sel, size=max_points_per_class, replace=False)
            color = colors[int(c)]
            label = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else None
            ax.scatter(pts[sel, 0], pts[sel, 1], s=6, color=color, alpha=0.6, linewidths=0, label=label)
            poly = hulls[int(c)]
            ax.fill(poly[:, 0], poly[:, 1], color=color, alpha=0.08)
            ax.plot(poly[:, 0], poly[:, 1], color=color, linewidth=1.0)
        overlap = hull_overlap(pts, lab)
        ax.set_title(f"{name}\n{overlap:.0%} of points inside another class's hull", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    if class_names is not None and len(classes) <= 20:
        axes[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)
