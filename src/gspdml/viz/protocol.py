"""MLRC protocol summary plot (the paper's Fig. 6 style): per metric, the 128D and 512D mean ± std
bars of one or more protocol results (``protocol.json`` of :func:`gspdml.engine.run_protocol`; its
``summary`` is the mean ± std over the collections of one model per fold).

Plots are written with matplotlib's object API (:func:`gspdml.viz.figure.save_figure`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from gspdml.errors import InputError
from gspdml.viz.figure import save_figure

__all__ = ["protocol_bars", "plot_protocol_summary"]

_DIMS = ("128D", "512D")
_NAMES = {"precision_at_1": "P@1", "r_precision": "RP", "map_at_r": "MAP@R"}


def _load(result, name: str) -> dict:
    if isinstance(result, (str, os.PathLike)):
        path = Path(result)
        if path.is_dir():
            path = path / "protocol.json"
        if not path.is_file():
            raise InputError(f"protocol result {name!r}: no protocol.json at {str(path)!r}")
        result = json.loads(path.read_text())
    if not isinstance(result, Mapping) or not isinstance(result.get("summary"), Mapping):
        raise InputError(f"protocol result {name!r} must be a protocol.json (or its dict) with a 'summary'")
    return dict(result)


def protocol_bars(results: Mapping[str, object], metrics: Sequence[str] = ("precision_at_1", "r_precision",
                                                                           "map_at_r")) -> dict:
    """The bar heights and error bars: ``{"mean": (M, D, n), "std": (M, D, n)}`` arrays in percent
    for M metrics, D = 2 dims (128D, 512D) and the n results (``results``: name -> protocol.json
    path, its folder, or its dict), in the order given."""
    if not results:
        raise InputError("plot_protocol_summary needs at least one protocol result")
    loaded = {name: _load(r, name) for name, r in results.items()}
    mean = np.zeros((len(metrics), len(_DIMS), len(loaded)))
    std = np.zeros_like(mean)
    for j, (name, res) in enumerate(loaded.items()):
        for d, dim in enumerate(_DIMS):
            for i, m in enumerate(metrics):
                try:
                    cell = res["summary"][dim][m]
                except KeyError:
                    raise InputError(f"protocol result {name!r} has no {dim} {m!r} in its summary") from None
                mean[i, d, j], std[i, d, j] = 100 * cell["mean"], 100 * cell["std"]
    return {"mean": mean, "std": std, "names": list(loaded), "metrics": list(metrics), "dims": list(_DIMS)}


def plot_protocol_summary(results: Mapping[str, object], path: str | os.PathLike,
                          metrics: Sequence[str] = ("precision_at_1", "r_precision", "map_at_r"),
                          title: str | None = None) -> Path:
    """One panel per metric; in each, a 128D and a 512D group with one bar per result (mean ± std
    over the collections, percent). Written as PNG to ``path``; returns the path."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    bars = protocol_bars(results, metrics)
    n = len(bars["names"])
    colors = colormaps["tab10"](np.arange(n) % 10)
    fig = Figure(figsize=(3.2 * len(metrics) + 0.4 * n, 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / n
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        for j, name in enumerate(bars["names"]):
            x = np.arange(len(_DIMS)) - 0.4 + width * (j + 0.5)
            ax.bar(x, bars["mean"][i, :, j], width, yerr=bars["std"][i, :, j], capsize=3, color=colors[j],
                   label=name if i == 0 else None)
        ax.set_xticks(np.arange(len(_DIMS)), _DIMS)
        ax.set_title(_NAMES.get(m, m))
        ax.set_ylabel("%" if i == 0 else "")
    fig.legend(loc="outside lower center", ncols=min(n, 4), fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
