"""Pooling-weight maps over images (paper Fig. 2 / Fig. 3b.2 / Fig. 5).

:func:`plot_weight_maps` draws a grid of images with the pooling weights of each location
overlaid. A weight map of ``n = h·w`` locations is upsampled to the image size and shown
*relative to uniform pooling*: the plotted value is ``n · p_i`` (1 = the weight GAP gives every
location, 0 = ignored, > 1 = emphasised), on a diverging colour scale centred at 1 with a colour
bar. With ``dominant`` (the index of the prototype receiving most of each location's mass, see
:func:`nearest_prototypes` and :func:`dominant_prototypes`) the locations are coloured by that prototype instead (colours from
:func:`gspdml.viz.prototypes.prototype_colors`) with opacity growing with the weight, as in the
paper's Fig. 5.

:func:`plot_weight_comparison` puts several poolings side by side (one row per method, one column
per image, e.g. GAP / GSP / GSP+L_ZS on the same test images): each map is a semi-transparent heat
layer over its greyscale (or colour) image, all panels share one colour scale and bar, and known
target cells (e.g. the Digits Collage's ``target_masks``) are outlined; :func:`cell_rectangles`
gives those outlines in image pixel coordinates.

Plots are written with matplotlib's object API (:func:`gspdml.viz.figure.save_figure`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

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
    "cell_rectangles",
    "comparison_figsize",
    "weight_comparison_figure",
    "plot_weight_comparison",
]

#: edge colour of the target-cell outlines (visible over grey images and the heat layer)
OUTLINE_COLOR = "cyan"


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
    target_cells=None,
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
        target_cells: optional (N, gh, gw) bool: known target cells of a grid over each image,
            outlined (see :func:`cell_rectangles`).

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
    outlines = _outlines(target_cells, n_img, (height, width))

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
        _draw_outlines(ax, outlines[i])
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


# ------------------------------------------------------------------------------ side-by-side maps
def cell_rectangles(cell_mask, image_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Outlines of the True cells of a grid mask over an image, in ``imshow`` pixel coordinates.

    ``cell_mask`` is (gh, gw) bool (e.g. one entry of the Digits Collage's ``target_masks``) over
    an image of ``image_size = (H, W)`` pixels (multiples of gh and gw). Returns one
    ``(x, y, width, height)`` per True cell, row by row: the cell in row ``r``, column ``c``
    covers pixels ``r*H/gh .. (r+1)*H/gh - 1``, whose edges lie half a pixel outside the pixel
    centres, so ``x = c*W/gw - 0.5``, ``y = r*H/gh - 0.5``, ``width = W/gw``, ``height = H/gh``.
    """
    m = _numpy("cell_mask", cell_mask)
    if m.ndim != 2 or m.dtype != bool:
        raise InputError(f"cell_mask must be a (rows, cols) bool array; got {m.dtype} {m.shape}")
    height, width = (int(s) for s in image_size)
    gh, gw = m.shape
    if height % gh or width % gw:
        raise InputError(f"image size {(height, width)} is not a multiple of the cell grid {(gh, gw)}")
    ch, cw = height // gh, width // gw
    return [(float(c * cw) - 0.5, float(r * ch) - 0.5, float(cw), float(ch)) for r, c in zip(*np.nonzero(m))]


def _outlines(target_cells, n_img: int, size: tuple[int, int]) -> list[list[tuple[float, float, float, float]]]:
    if target_cells is None:
        return [[] for _ in range(n_img)]
    cells = _numpy("target_cells", target_cells)
    if cells.ndim != 3 or cells.dtype != bool or len(cells) != n_img:
        raise InputError(f"target_cells must be a (N={n_img}, rows, cols) bool array; got {cells.dtype} {cells.shape}")
    return [cell_rectangles(c, size) for c in cells]


def _draw_outlines(ax, rects) -> None:
    from matplotlib.patches import Rectangle

    for x, y, w, h in rects:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=OUTLINE_COLOR, linewidth=1.3))


def comparison_figsize(n_methods: int, n_images: int, panel_size: float = 1.6,
                       title: bool = False) -> tuple[float, float]:
    """Figure size (inches) of :func:`weight_comparison_figure`: ``panel_size`` per panel, plus
    1.4 in of width (row labels and colour bar) and 0.3 in of height (0.6 with a title)."""
    return (panel_size * n_images + 1.4, panel_size * n_methods + (0.6 if title else 0.3))


def weight_comparison_figure(
    images,
    weights: Mapping[str, object],
    titles: Sequence[str] | None = None,
    target_cells=None,
    interpolation: str = "bilinear",
    alpha: float = 0.5,
    cmap: str = "inferno",
    vmax: float | None = None,
    panel_size: float = 1.6,
    title: str | None = None,
):
    """The side-by-side figure of :func:`plot_weight_comparison` (a ``matplotlib.figure.Figure``,
    not written; its axes are row-major: method ``i``, image ``j`` is ``fig.axes[i * N + j]``)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not isinstance(weights, Mapping) or not weights:
        raise InputError("weights must be a non-empty mapping method name -> (N, h, w) weight maps")
    im = _prepare_images(images)
    n_img = len(im)
    if n_img == 0:
        raise InputError("no images to plot")
    height, width = im.shape[1:3]
    rel = {}
    for name, w in weights.items():
        r = relative_weights(w)
        if len(r) != n_img:
            raise InputError(f"weights of {name!r}: {len(r)} maps for {n_img} images")
        rel[str(name)] = upsample_maps(r, (height, width), interpolation)
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n_img:
            raise InputError(f"titles has {len(titles)} entries for {n_img} images")
    if not 0 < alpha <= 1:
        raise InputError(f"alpha must be in (0, 1]; got {alpha!r}")
    if panel_size <= 0:
        raise InputError(f"panel_size must be > 0; got {panel_size!r}")
    outlines = _outlines(target_cells, n_img, (height, width))
    top = max(max(float(r.max()) for r in rel.values()), 2.0) if vmax is None else float(vmax)
    if top <= 1.0:
        raise InputError(f"vmax must be > 1 (uniform weight is 1); got {vmax!r}")
    norm = Normalize(vmin=0.0, vmax=top)

    fig = Figure(figsize=comparison_figsize(len(rel), n_img, panel_size, bool(title)), layout="constrained")
    axes = fig.subplots(len(rel), n_img, squeeze=False)
    for i, (name, maps) in enumerate(rel.items()):
        for j in range(n_img):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if im.ndim == 3:
                ax.imshow(im[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(im[j], interpolation="nearest")
            ax.imshow(maps[j], cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
            _draw_outlines(ax, outlines[j])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0 and titles is not None:
                ax.set_title(titles[j], fontsize=7)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8, fraction=0.04)
    bar.set_label("pooling weight × n  (1 = uniform, as GAP)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_weight_comparison(
    images,
    weights: Mapping[str, object],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    target_cells=None,
    interpolation: str = "bilinear",
    alpha: float = 0.5,
    cmap: str = "inferno",
    vmax: float | None = None,
    panel_size: float = 1.6,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write a PNG comparing the pooling weights of several methods on the same images.

    One row per method (in the order of ``weights``), one column per image. Each panel shows the
    image (greyscale or RGB, as :func:`plot_weight_maps` takes them) under a semi-transparent heat
    layer (``alpha``, colour map ``cmap``): the method's weight map upsampled to the image size,
    relative to uniform pooling (:func:`relative_weights`: 1 = GAP's weight). All panels share one
    colour scale from 0 to ``vmax`` (default: the largest value, at least 2) and one colour bar.

    Args:
        images: (N, H, W) or (N, H, W, 3).
        weights: method name -> (N, h, w) pooling weights of the same N images.
        path: output ``.png``.
        titles: optional N column titles (e.g. the class of each image).
        target_cells: optional (N, gh, gw) bool: known target cells, outlined in every row.
        interpolation: ``bilinear`` (default) or ``nearest`` upsampling of the maps.
        panel_size: inches per panel; the figure is :func:`comparison_figsize` inches at ``dpi``.

    Returns the written path.
    """
    from gspdml.viz.figure import save_figure

    fig = weight_comparison_figure(images, weights, titles=titles, target_cells=target_cells,
                                   interpolation=interpolation, alpha=alpha, cmap=cmap, vmax=vmax,
                                   panel_size=panel_size, title=title)
    return save_figure(fig, path, dpi=dpi)
