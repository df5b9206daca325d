"""MLRC aggregation ("A Metric Learning Reality Check", as the GSP paper uses it): pure functions
on metrics and embeddings. The driver that trains the fold models is :mod:`gspdml.engine.protocol`.

- **128D**: each fold model's metrics on its own (128-D) embeddings, averaged over the folds;
- **512D**: the metrics of the concatenation of the fold models' L2-normalised embeddings (512-D,
  re-normalised, which does not change the ranking).

**Collections** (the paper's numbers): with R repeats of K folds there are R^K collections, each
picking, for every fold k, one repeat's model ``choice[k]`` (3 repeats x 4 folds: 3^4 = 81). The
paper's 128D / 512D are the mean ± std of the collections' 128D / 512D metrics
(:func:`collection_metrics`). The per-repeat numbers (collection ``(r, r, ..., r)`` for each r) are
kept as well (:func:`summarize` of the per-repeat rows).

Every std is the sample std (ddof=1; 0 for a single row).
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gspdml.errors import InputError
from gspdml.io import format_table as _format_table

__all__ = [
    "MLRC_METRICS",
    "concat_embeddings",
    "summarize",
    "format_table",
    "collection_choices",
    "collection_dim128",
    "collection_dim512",
    "collection_metrics",
]

MLRC_METRICS = ("precision_at_1", "r_precision", "map_at_r")


def _as_tensor(e) -> torch.Tensor:
    """One model's embeddings as a tensor, without a copy (tensor, array or memmap in)."""
    return e if isinstance(e, torch.Tensor) else torch.from_numpy(np.asarray(e))


def _normalized(e) -> torch.Tensor:
    """One model's embeddings as an L2-normalised float tensor."""
    return F.normalize(_as_tensor(e).float(), dim=1)


def concat_embeddings(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate L2-normalised per-model embeddings and re-normalise (the MLRC "512D" embedding)."""
    return F.normalize(torch.cat([_normalized(e) for e in embeddings], dim=1), dim=1)


def summarize(rows: list[dict]) -> dict:
    """``{metric: {"mean", "std"}}`` over a list of metric dicts (std with ddof=1; 0 for one row)."""
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out


def collection_choices(num_repeats: int, num_folds: int) -> list[tuple[int, ...]]:
    """All ``num_repeats ** num_folds`` collections: tuples ``choice`` with ``choice[k]`` the repeat
    whose fold-k model the collection takes (lexicographic order, ``(0, ..., 0)`` first)."""
    if num_repeats < 1 or num_folds < 1:
        raise InputError(f"collections need >= 1 repeat and >= 1 fold, got {num_repeats} repeat(s), "
                         f"{num_folds} fold(s)")
    return list(itertools.product(range(num_repeats), repeat=num_folds))


def _grid_shape(grid, name: str) -> tuple[int, int]:
    """(R, K) of a per-(repeat, fold) nested list, checked rectangular and non-empty."""
    if not isinstance(grid, Sequence) or not grid or not all(isinstance(row, Sequence) for row in grid):
        raise InputError(f"{name} must be a non-empty list (repeats) of lists (folds)")
    widths = {len(row) for row in grid}
    if len(widths) != 1 or 0 in widths:
        raise InputError(f"{name} must have the same non-zero number of folds in every repeat, "
                         f"got fold counts {[len(row) for row in grid]}")
    return len(grid), widths.pop()


def collection_dim128(per_fold: Sequence[Sequence[dict]],
                      choices: Iterable[Sequence[int]] | None = None) -> list[dict]:
    """Per collection, the fold average of its models' metrics (the collection's 128D).

    Args:
        per_fold: ``per_fold[r][k]``: the test metrics of repeat r's fold-k model.
        choices: the collections (default :func:`collection_choices` of all R^K).
    """
    num_repeats, num_folds = _grid_shape(per_fold, "per_fold")
    keys = list(per_fold[0][0])
    for r, row in enumerate(per_fold):
        for k, m in enumerate(row):
            if set(m) != set(keys):
                raise InputError(f"per_fold[{r}][{k}] has metrics {sorted(m)}, expected {sorted(keys)}")
    choices = collection_choices(num_repeats, num_folds) if choices is None else [tuple(c) for c in choices]
    _check_choices(choices, num_repeats, num_folds)
    return [{key: float(np.mean([per_fold[c[k]][k][key] for k in range(num_folds)])) for key in keys}
            for c in choices]


def _check_choices(choices, num_repeats: int, num_folds: int) -> None:
    for c in choices:
        if len(c) != num_folds or not all(0 <= r < num_repeats for r in c):
            raise InputError(f"collection {tuple(c)} must pick one repeat in 0..{num_repeats - 1} "
                             f"for each of the {num_folds} folds")


def collection_dim512(
    query: Sequence[Sequence],
    metric_fn: Callable[[torch.Tensor, torch.Tensor | None], dict],
    gallery: Sequence[Sequence] | None = None,
    choices: Iterable[Sequence[int]] | None = None,
) -> list[dict]:
    """Per collection, the metrics of its models' concatenated embeddings (the collection's 512D).

    The embeddings are used as given (not copied); one collection's normalised concatenation
    exists at a time.

    Args:
        query: ``query[r][k]``: repeat r's fold-k model's (N, D) test (query) embeddings.
        metric_fn: ``metric_fn(query_512, gallery_512 or None) -> metrics`` (the labels are the
            caller's: every model embeds the same test set in the same order).
        gallery: ``gallery[r][k]``: the gallery embeddings, or ``None`` for self-retrieval.
        choices: the collections (default all R^K).
    """
    num_repeats, num_folds = _grid_shape(query, "query")
    if gallery is not None and _grid_shape(gallery, "gallery") != (num_repeats, num_folds):
        raise InputError(f"gallery must have the query's {num_repeats} repeat(s) x {num_folds} fold(s), "
                         f"got {len(gallery)} x {[len(row) for row in gallery]}")
    choices = collection_choices(num_repeats, num_folds) if choices is None else [tuple(c) for c in choices]
    _check_choices(choices, num_repeats, num_folds)

    def checked(grid, name):
        out = [[_as_tensor(e) for e in row] for row in grid]
        for k in range(num_folds):
            shapes = [tuple(out[r][k].shape) for r in range(num_repeats)]
            if any(len(sh) != 2 for sh in shapes) or len({sh[0] for sh in shapes}) != 1:
                raise InputError(f"{name} embeddings of fold {k} must be 2-D with the same number of rows "
                                 f"in every repeat, got shapes {shapes}")
        if len({out[0][k].shape[0] for k in range(num_folds)}) != 1:
            raise InputError(f"{name} embeddings must have the same number of rows in every fold (one test set), "
                             f"got {[out[0][k].shape[0] for k in range(num_folds)]}")
        return out

    q = checked(query, "query")
    g = None if gallery is None else checked(gallery, "gallery")
    rows = []
    for c in choices:
        q_cat = concat_embeddings([q[c[k]][k] for k in range(num_folds)])
        g_cat = None if g is None else concat_embeddings([g[c[k]][k] for k in range(num_folds)])
        rows.append(metric_fn(q_cat, g_cat))
    return rows


def collection_metrics(
    per_fold: Sequence[Sequence[dict]],
    query: Sequence[Sequence],
    metric_fn: Callable[[torch.Tensor, torch.Tensor | None], dict],
    gallery: Sequence[Sequence] | None = None,
) -> dict:
    """The paper's MLRC numbers over all R^K collections of one model per fold.

    Args:
        per_fold: ``per_fold[r][k]``: repeat r's fold-k test metrics (128-D embeddings).
        query, gallery, metric_fn: as :func:`collection_dim512`.

    Returns:
        ``{"choices": [[r_0, ..., r_{K-1}], ...], "128D": [metrics per collection],
        "512D": [metrics per collection], "summary": {"128D": {metric: {"mean", "std"}}, "512D": ...}}``.
    """
    shape = _grid_shape(per_fold, "per_fold")
    if _grid_shape(query, "query") != shape:
        raise InputError(f"query embeddings must match per_fold's {shape[0]} repeat(s) x {shape[1]} fold(s), "
                         f"got {len(query)} x {[len(row) for row in query]}")
    choices = collection_choices(*shape)
    dim128 = collection_dim128(per_fold, choices)
    dim512 = collection_dim512(query, metric_fn, gallery, choices)
    return {"choices": [list(c) for c in choices], "128D": dim128, "512D": dim512,
            "summary": {"128D": summarize(dim128), "512D": summarize(dim512)}}


def format_table(summary: dict, metrics=MLRC_METRICS, markdown: bool = True) -> str:
    """A table like the paper's: rows 128D/512D, columns P@1, RP, MAP@R (percent, mean ± std);
    Markdown, or aligned plain text (:func:`gspdml.io.format_table`)."""
    names = {"precision_at_1": "P@1", "r_precision": "RP", "map_at_r": "MAP@R"}
    rows = [[dim] + [f"{100 * summary[dim][m]['mean']:.2f} ± {100 * summary[dim][m]['std']:.2f}" for m in metrics]
            for dim in ("128D", "512D")]
    return _format_table(["dim"] + [names.get(m, m) for m in metrics], rows, markdown=markdown)
