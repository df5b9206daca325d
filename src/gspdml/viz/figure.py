"""Writing a matplotlib figure: PNG only, on an Agg canvas (no global backend change)."""
from __future__ import annotations

import os
from pathlib import Path

from gspdml.errors import InputError

__all__ = ["save_figure"]


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` (a ``matplotlib.figure.Figure``) to ``path`` (``.png``; folders are created)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"plots are written as PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path
