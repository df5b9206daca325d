"""MLRC aggregation ("A Metric Learning Reality Check", as the GSP paper uses it): pure functions
on metrics and embeddings. The driver that trains the fold models is :mod:`gspdml.engine.protocol`.

- **128D**: each fold model's metrics on its own (128-D) embeddings, averaged over the folds;
- **512D**: the metrics of the concatenation of the fold models' L2-normalised embeddings (512-D,
  re-normalised, which does not change the ranking).

Over the repeats the table reports mean ± std (sample std, ddof=1; 0 for a single repeat),
as the paper does (3 repeats).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gspdml.io import format_table as _format_table

__all__ = ["MLRC_METRICS", "concat_embeddings", "summarize", "format_table"]

MLRC_METRICS = ("precision_at_1", "r_precision", "map_at_r")


def concat_embeddings(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate L2-normalised per-model embeddings and re-normalise (the MLRC "512D" embedding)."""
    return F.normalize(torch.cat([F.normalize(e.float(), dim=1) for e in embeddings], dim=1), dim=1)


def summarize(rows: list[dict]) -> dict:
    """``{metric: {"mean", "std"}}`` over a list of metric dicts (std with ddof=1; 0 for one row)."""
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out


def format_table(summary: dict, metrics=MLRC_METRICS, markdown: bool = True) -> str:
    """A table like the paper's: rows 128D/512D, columns P@1, RP, MAP@R (percent, mean ± std);
    Markdown, or aligned plain text (:func:`gspdml.io.format_table`)."""
    names = {"precision_at_1": "P@1", "r_precision": "RP", "map_at_r": "MAP@R"}
    rows = [[dim] + [f"{100 * summary[dim][m]['mean']:.2f} ± {100 * summary[dim][m]['std']:.2f}" for m in metrics]
            for dim in ("128D", "512D")]
    return _format_table(["dim"] + [names.get(m, m) for m in metrics], rows, markdown=markdown)
