"""Pooling-weight maps over images (paper Fig. 2 / Fig. 3b.2 / Fig. 5).

:func:`plot_weight_maps` draws a grid of images with the pooling weights of each location
overlaid. A weight map of ``n = h·w`` locations is upsampled to the image size and shown
*relative to uniform pooling*: the plotted value is ``n · p_i`` (1 = the weight GAP gives every
location, 0 = ignored, > 1 = emphasised), on a diverging colour scale centred at 1 with a colour
bar. With ``dominant`` (the index of the prototype receiving most of each location's mass, see
:func:`nearest_prototypes` and :func:`dominant_prototypes`) the locations are coloured by that prototype instead (colours from
:func:`gspdml.viz.prototypes.prototype_colors`) with opacity growing with the weight, as in the
paper's Fig. 5.

Plots are written with matplotlib's object API (:func:`gspdml.viz.figure.save_figure`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gspdml.errors import InputError

__all__ = [
    "plot_weight_maps",
    "upsample_maps",
    "dominant_prototypes",
    "nearest_prototypes",
    "relative_weights",
    "to_display_image",
]


def _numpy(name: str, array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputError(f"{name} must be a numeric array; got dtype {array.dtype}")
    return array


def relative_weights(weights) -> np.ndarray:
    """Weights (N, h, w) rescaled per sample so that uniform pooling is 1: ``n · p / sum(p)``."""
    w = _numpy("weights", weights).astype(np.float64)
    if w.ndim != 3:
        raise InputError(
            f"weights must be (N, h, w) maps; got shape {w.shape} (token sets have no spatial layout)"
        )
    if not np.isfinite(w).all() or (w < -1e-9).any():
        raise InputError("weights must be finite and non-negative (pooling weights)")
    sums = w.reshape(len(w), -1).sum(1)
    if (sums <= 0).any():
        raise InputError(f"weights of sample(s) {np.flatnonzero(sums <= 0).tolist()} sum to zero")
    n = w.shape[1] * w.shape[2]
    return np.clip(w, 0, None) * (n / sums)[:, None, None]


def upsample_maps(maps, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Upsample (N, h, w) maps to (N, H, W) (``bilinear`` or ``nearest``)."""
    m = torch.as_tensor(_numpy("maps", maps), dtype=torch.float64)
    if m.ndim != 3:
        raise InputError(f"maps must be (N, h, w); got shape {tuple(m.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise InputError(f"unknown interpolation {mode!r}; valid choices are: bilinear, nearest")
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(m[:, None], size=tuple(int(s) for s in size), mode=mode, **kwargs)[:, 0].numpy()


def dominant_prototypes(plan, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Index of the prototype receiving most of each location's mass.

    ``plan`` is the transport plan (N, m, n) of a GSP layer; returns (N, n) or, with ``shape``
    ``(h, w)`` (``h·w = n``), (N, h, w).
    """
    p = _numpy("plan", plan)
    if p.ndim != 3:
        raise InputError(f"plan must be (N, prototypes, locations); got shape {p.shape}")
    dom = p.argmax(axis=1)
    if shape is not None:
        h, w = (int(s) for s in shape)
        if h * w != dom.shape[1]:
            raise InputError(f"map shape {(h, w)} does not hold the plan's {dom.shape[1]} locations")
        dom = dom.reshape(len(dom), h, w)
    return dom


def nearest_prototypes(features, prototypes) -> np.ndarray:
    """Dominant prototype of each location of a GSP input, without solving the transport.

    In GSP's solution ``pi_ij = softmax_i(-eps c_ij) · sigma_j / n`` the prototype receiving most
    of location ``j``'s mass is the one of smallest cost ``c_ij = ||w̄_i − f̄_j||`` (any ``mu``,
    ``eps``), so this is ``argmin_i`` of :func:`gspdml.functional.prototype_cost`.

    ``features``: the GSP layer's input, a map (N, C, h, w) or a token set (N, n, C);
    ``prototypes``: (m, C). Returns (N, h, w) or (N, n) prototype indices.
    """
    from gspdml.functional import prototype_cost

    f = torch.as_tensor(_numpy("features", features)) if not isinstance(features, torch.Tensor) else features
    w = torch.as_tensor(_numpy("prototypes", prototypes)) if not isinstance(prototypes, torch.Tensor) else prototypes
    f, w = f.detach().cpu().double(), w.detach().cpu().double()
    if f.ndim == 4:
        n_img, _, h, wd = f.shape
        cost = prototype_cost(f.flatten(2).transpose(1, 2), w)
        return cost.argmin(1).reshape(n_img, h, wd).numpy()
    if f.ndim == 3:
        return prototype_cost(f, w).argmin(1).numpy()
    raise InputError(f"features must be (N, C, h, w) or (N, n, C); got shape {tuple(f.shape)}")


def to_display_image(image: torch.Tensor | np.ndarray, normalization: str = "none") -> np.ndarray:
    """Undo a gspdml input normalisation: (C, H, W) tensor -> (H, W) or (H, W, 3) floats in [0, 1]."""
    from gspdml.data.transforms import NORMALIZATIONS

    x = torch.as_tensor(_numpy("image", image), dtype=torch.float64)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise InputError(f"image must be (1 or 3, H, W); got shape {tuple(x.shape)}")
    if normalization not in NORMALIZATIONS:
        from gspdml.errors import unknown_choice

        raise unknown_choice("normalization", normalization, NORMALIZATIONS)
    spec = NORMALIZATIONS[normalization]
    if x.shape[0] == 3:
        mean = torch.tensor(spec["mean"], dtype=x.dtype)[:, None, None]
        std = torch.tensor(spec["std"], dtype=x.dtype)[:, None, None]
        x = (x * std + mean) / spec["scale"]
        if spec["bgr"]:
            x = x.flip(0)
        return x.permute(1, 2, 0).clamp(0, 1).numpy()
    return x[0].clamp(0, 1).numpy()


def _prepare_images(images) -> np.ndarray:
    raw = _numpy("images", images)
    im = raw.astype(np.float64)
    if raw.dtype == np.uint8:
        im = im / 255.0
    if im.ndim == 4 and im.shape[-1] == 1:
        im = im[..., 0]
    if not (im.ndim == 3 or (im.ndim == 4 and im.shape[-1] == 3)):
        raise InputError(f"images must be (N, H, W) or (N, H, W, 3); got shape {im.shape}")
    if not np.isfinite(im).all():
        raise InputError("images contain NaN or inf values")
    flat = im.reshape(len(im), -1)
    lo, hi = flat.min(1, initial=0.0), flat.max(1, initial=0.0)
    for i in np.flatnonzero((lo < 0) | (hi > 1)):  # e.g. normalised tensors: min-max scale that image
        im[i] = (im[i] - im[i].min()) / max(float(im[i].max() - im[i].min()), 1e-12)
    return im


def plot_weight_maps(
    images,
    weights,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    dominant=None,
    num_prototypes: int | None = None,
    ncols: int | None = None,
    alpha: float = 0.6,
    interpolation: str = "bilinear",
    vmax: float | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of images with their pooling-weight maps overlaid.

    Args:
        images: (N, H, W) greyscale or (N, H, W, 3) RGB; floats in [0, 1] or uint8 (images out of
            range, e.g. normalised tensors, are min-max scaled per image; see
            :func:`to_display_image` to undo a known normalisation instead).
        weights: (N, h, w) pooling weights (any positive scale; each map is rescaled so that
            uniform weight ``1/n`` reads as 1, see :func:`relative_weights`).
        path: output ``.png`` file (folders are created).
        titles: optional N panel titles.
        dominant: optional (N, h, w) integer prototype index per location (e.g. from
            :func:`nearest_prototypes` or :func:`dominant_prototypes`): locations are coloured by their dominant prototype,
            with opacity proportional to the relative weight.
        num_prototypes: number of prototypes for the colours (default ``dominant.max() + 1``).
        ncols: panels per row (default up to 8).
        alpha: overlay opacity (at the largest relative weight when colouring by prototype).
        interpolation: ``bilinear`` (default) or ``nearest`` upsampling of the maps.
        vmax: upper end of the relative-weight colour scale (default: the largest value, >= 2).
        title: optional figure title.

    Returns the written path.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm
    from matplotlib.figure import Figure

    from gspdml.viz.figure import save_figure
    from gspdml.viz.prototypes import prototype_colors

    im = _prepare_images(images)
    rel = relative_weights(weights)
    if len(im) != len(rel):
        raise InputError(f"got {len(im)} images but {len(rel)} weight maps")
    if len(im) == 0:
        raise InputError("no images to plot")
    n_img = len(im)
    height, width = im.shape[1:3]
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n_img:
            raise InputError(f"titles has {len(titles)} entries for {n_img} images")
    rel_up = upsample_maps(rel, (height, width), interpolation)
    if not 0 < alpha <= 1:
        raise InputError(f"alpha must be in (0, 1]; got {alpha!r}")

    dom_up = None
    if dominant is not None:
        dom = _numpy("dominant", dominant)
        if dom.shape != rel.shape or not np.issubdtype(dom.dtype, np.integer) or (dom < 0).any():
            raise InputError(
                f"dominant must be a non-negative integer array shaped like weights {rel.shape}; got "
                f"{dom.shape} {dom.dtype}"
            )
        num_prototypes = int(num_prototypes or dom.max() + 1)
        if dom.max() >= num_prototypes:
            raise InputError(f"dominant holds prototype {int(dom.max())} but num_prototypes is {num_prototypes}")
        dom_up = upsample_maps(dom.astype(np.float64), (height, width), "nearest").round().astype(int)

    ncols = int(ncols or min(n_img, 8))
    nrows = math.ceil(n_img / ncols)
    top = max(float(rel.max()), 2.0) if vmax is None else float(vmax)
    if top <= 1.0:
        raise InputError(f"vmax must be > 1 (uniform weight is 1); got {vmax!r}")
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)
    cmap = "RdBu_r"

    fig = Figure(figsize=(1.9 * ncols + 1.2, 1.9 * nrows + (0.5 if title else 0.25)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappable = None
    for i in range(nrows * ncols):
        ax = axes[i // ncols][i % ncols]
        ax.set_axis_off()
        if i >= n_img:
            continue
        if im.ndim == 3:
            ax.imshow(im[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(im[i], interpolation="nearest")
        if dom_up is None:
            mappable = ax.imshow(rel_up[i], cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
        else:
            colors = prototype_colors(num_prototypes)
            rgba = colors[dom_up[i]].copy()
            rgba[..., 3] = alpha * np.clip(rel_up[i] / top, 0.0, 1.0)
            ax.imshow(rgba, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if dom_up is None:
        bar = fig.colorbar(mappable, ax=axes, shrink=0.8, fraction=0.04)
        bar.set_label("pooling weight × n  (1 = uniform 1/n)", fontsize=7)
    else:
        colors = prototype_colors(num_prototypes)
        listed = ListedColormap(colors[:, :3])
        bounds = np.arange(num_prototypes + 1) - 0.5
        from matplotlib.cm import ScalarMappable

        sm = ScalarMappable(norm=BoundaryNorm(bounds, listed.N), cmap=listed)
        bar = fig.colorbar(sm, ax=axes, shrink=0.8, fraction=0.04, ticks=np.arange(num_prototypes))
        bar.set_label("dominant prototype (opacity ∝ weight)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
