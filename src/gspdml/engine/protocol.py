"""The MLRC protocol driver: train one model per fold (and repeat), embed the test set with each,
aggregate 128D / 512D with :mod:`gspdml.evaluation.mlrc`.

For each repeat r and each fold k = 0..3, one model is trained on three quarters of the training
classes with early stopping on the held-out quarter (``data.fold = k``); each model then embeds the
test set (classes never seen in training).

The headline numbers (``ProtocolResult.summary``, ``protocol.md``) are the paper's: mean ± std over
all R^K collections of one model per fold (3 repeats x 4 folds: 81;
:func:`gspdml.evaluation.mlrc.collection_metrics`); the per-repeat numbers are kept
(``dim128``, ``dim512``, ``repeat_summary``). Every fold model's test embeddings are kept (in host
memory: R x K x the test set's size x the embedding dimension) and reused by every collection.

Under ``torchrun`` the process group is started once for the whole protocol and every rank takes
part in every fold, one fold after the other (each fold is one multi-process training run, its test
set embedded in strided shards and gathered); only rank 0 writes the fold run folders,
``config.yaml``, ``protocol.json`` and ``protocol.md``; every rank returns the same result.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from gspdml.config import TrainConfig, save_config
from gspdml.engine.datasets import build_datasets, make_split
from gspdml.engine.distributed import DistContext, cleanup, init_from_env
from gspdml.engine.evaluate import EmbeddedSplits, embed_query_gallery
from gspdml.engine.runs import new_run_dir
from gspdml.engine.trainer import train
from gspdml.errors import ConfigError
from gspdml.evaluation.mlrc import collection_metrics, format_table, summarize
from gspdml.io import write_json

__all__ = ["ProtocolResult", "run_protocol"]


@dataclass
class ProtocolResult:
    """128D (fold average) and 512D (concatenation) metrics: over all collections of one model per
    fold (the headline, as the paper) and per repeat."""

    per_fold: list[list[dict]]
    """``per_fold[r][k]``: test metrics of repeat r, fold k (128-D embeddings)."""
    dim128: list[dict]
    """Per repeat: the fold-averaged metrics."""
    dim512: list[dict]
    """Per repeat: the metrics of the concatenated embeddings."""
    summary: dict
    """The headline: ``{"128D": {metric: {"mean", "std"}}, "512D": {...}}`` over the collections
    (``collections["summary"]``; with one repeat, the one collection = the one repeat)."""
    repeat_summary: dict
    """The same over the repeats (``dim128``, ``dim512``)."""
    collections: dict
    """:func:`gspdml.evaluation.mlrc.collection_metrics`: ``choices`` (the repeat picked for each
    fold), ``128D`` / ``512D`` (metrics per collection) and ``summary``."""
    out_dir: Path | None = None
    run_dirs: list[list[Path | None]] = field(default_factory=list)


def run_protocol(
    cfg,
    repeats: int = 1,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    datasets: Mapping | None = None,
    folds: list[int] | None = None,
) -> ProtocolResult:
    """Run the MLRC protocol for ``cfg`` (4 folds x ``repeats``) and write the protocol table.

    Args:
        cfg: a TrainConfig; ``data.fold`` and ``train.seed`` are set per run (seed + repeat).
        repeats: independent repeats per fold (the paper: 3).
        out_dir: where the fold runs and ``protocol.json``/``protocol.md`` go (default
            ``output_dir/name``; nothing is written when both are null).
        datasets: optional ready datasets ``{"train", "test", "gallery"}`` (tests, demos); each
            fold's run splits ``train`` with :func:`gspdml.data.split_train_val`.
        folds: a subset of folds to run (default all ``data.num_folds``); 512D concatenates those.
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"run_protocol needs a TrainConfig, got {type(cfg).__name__}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    num_folds = cfg.data.num_folds
    fold_ids = list(range(num_folds)) if folds is None else list(folds)
    bad = [k for k in fold_ids if not 0 <= k < num_folds]
    if bad or not fold_ids:
        raise ConfigError(f"folds must be a non-empty subset of 0..{num_folds - 1}, got {folds}")
    ctx = init_from_env(cfg.train.device)  # under torchrun: one process group for all folds
    try:
        return _run_protocol(cfg, ctx, repeats, progress and ctx.is_main, out_dir, datasets, fold_ids)
    finally:
        cleanup(ctx)


def _run_protocol(cfg: TrainConfig, ctx: DistContext, repeats: int, progress: bool, out_dir, datasets,
                  fold_ids: list[int]) -> ProtocolResult:
    if out_dir is not None:
        base = Path(out_dir)
    elif cfg.output_dir is None:
        base = None
    else:
        base = ctx.broadcast_object(new_run_dir(cfg.output_dir, cfg.name) if ctx.is_main else None)

    # the full train split (each fold run splits it, validating on the eval-transform copy) and
    # the test split, built once
    ready = dict(datasets or {})
    if not {"train", "test"} <= set(ready):
        probe = copy.deepcopy(cfg)
        probe.data.fold = None
        probe.eval.test_at_end = True
        built = build_datasets(probe)
        built["train_eval"] = make_split(probe, probe.data.train_split, False)
        ready = {**built, **ready}
    fold_data = {"train": ready["train"], "train_eval": ready.get("train_eval")}
    test_ds, gallery_ds = ready["test"], ready.get("gallery")

    per_fold, embs, run_dirs = [], [], []
    for r in range(repeats):
        fold_rows, fold_embs, dirs = [], [], []
        for k in fold_ids:
            c = copy.deepcopy(cfg)
            c.data.fold = k
            c.train.seed = cfg.train.seed + r
            c.eval.test_at_end = False
            c.name = f"repeat{r}_fold{k}"
            run_dir = None if base is None else base / c.name
            res = train(c, progress=progress, run_dir=run_dir, datasets=fold_data)
            emb = embed_query_gallery(res.model, test_ds, gallery_ds, batch_size=cfg.eval.batch_size,
                                      device=next(res.model.parameters()).device, progress=progress,
                                      num_workers=cfg.data.num_workers, ctx=ctx, desc=f"test r{r} f{k}")
            fold_rows.append(emb.metrics(cfg.eval.recall_ks, cfg.eval.metrics))
            fold_embs.append(emb)
            dirs.append(res.run_dir)
        per_fold.append(fold_rows)
        embs.append(fold_embs)
        run_dirs.append(dirs)
    query_labels, gallery_labels = embs[0][0].query_labels, embs[0][0].gallery_labels

    def metric_fn(query, gallery):
        return EmbeddedSplits(query, query_labels, gallery, gallery_labels).metrics(cfg.eval.recall_ks,
                                                                                    cfg.eval.metrics)

    # every collection's 512D (R^K metric computations) on the kept embeddings; the per-repeat
    # numbers are the collections (r, ..., r)
    collections = collection_metrics(per_fold, [[e.query for e in row] for row in embs], metric_fn,
                                     None if gallery_ds is None else [[e.gallery for e in row] for row in embs])
    diagonal = [collections["choices"].index([r] * len(fold_ids)) for r in range(repeats)]
    dim128 = [collections["128D"][i] for i in diagonal]
    dim512 = [collections["512D"][i] for i in diagonal]
    summary = collections["summary"]
    repeat_summary = {"128D": summarize(dim128), "512D": summarize(dim512)}
    result = ProtocolResult(per_fold, dim128, dim512, summary, repeat_summary, collections, base, run_dirs)
    if base is not None and ctx.is_main:
        base.mkdir(parents=True, exist_ok=True)
        save_config(cfg, base / "config.yaml")
        write_json(base / "protocol.json", {
            "repeats": repeats, "folds": fold_ids, "per_fold": per_fold,
            "per_repeat": {"128D": dim128, "512D": dim512, "summary": repeat_summary},
            "collections": collections, "summary": summary,
        })
        n = len(collections["choices"])
        (base / "protocol.md").write_text(
            f"# MLRC protocol: {cfg.name}\n\n{len(fold_ids)} folds x {repeats} repeat(s). Mean ± std in percent "
            f"over the {n} collection(s) of one model per fold ({repeats}^{len(fold_ids)}; the paper's MLRC "
            f"numbers, std with ddof=1):\n\n" + format_table(summary)
            + f"\n\nPer repeat (mean ± std over the {repeats} repeat(s)):\n\n" + format_table(repeat_summary) + "\n"
        )
    return result
