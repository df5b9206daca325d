"""Embedding and evaluation with a model: :func:`embed_dataset` (eval mode, no gradients, tqdm
progress, sharded over ranks under torchrun, autocast in a given precision), :func:`embed_query_gallery`
and :func:`evaluate_model`, the one "embed queries (and gallery), then compute the retrieval metrics"
used by the trainer, the protocol, the demo and ``gspdml eval``; :func:`check_not_collapsed` refuses
embeddings that carry no information (all identical, zero norm)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gspdml.data.batches import move_input, split_batch
from gspdml.engine.distributed import DistContext, all_gather_ordered
from gspdml.errors import InputError
from gspdml.evaluation.metrics import compute_retrieval_metrics

__all__ = ["embed_dataset", "EmbeddedSplits", "embed_query_gallery", "evaluate_model", "check_not_collapsed",
           "autocast_dtype", "memmap_folder"]

Precision = Union[str, torch.dtype, None]
"""``train.precision`` names (``fp32``, ``bf16``, ``fp16``, ``auto``), an autocast dtype, or ``None`` (fp32)."""


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: fp32, no autocast); names are
    resolved with :func:`gspdml.config.resolve_precision` (``fp16`` off CUDA is a ConfigError)."""
    if precision is None or isinstance(precision, torch.dtype):
        return None if precision in (None, torch.float32) else precision
    from gspdml.config import resolve_precision

    return resolve_precision(precision, device.type)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def embed_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    return_details: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "embed",
    precision: Precision = "fp32",
    ctx: DistContext | None = None,
    out: str | os.PathLike | None = None,
):
    """Embed every item of ``dataset`` in order.

    Args:
        model: an embedding model, ``model(x, mask=None, return_details=False)``.
        dataset: returns ``(input, label)`` items.
        batch_size, num_workers: DataLoader settings.
        device: where to run (default: the model's device). The model is moved there.
        return_details: also return the pooling details (``weights``, ``marginals``),
            concatenated over the dataset (entries that are ``None`` are left out).
        progress: show a tqdm bar.
        precision: autocast precision (see :func:`autocast_dtype`); default fp32.
        ctx: under torchrun, each rank embeds a strided shard and every rank gets the whole
            result in dataset order (no ``return_details`` then).
        out: write the embeddings batch by batch to this ``.npy`` file, memory-mapped
            (``numpy.lib.format.open_memmap``), instead of holding them in RAM; the embeddings
            are then returned as a read-only ``numpy.memmap`` of it, which
            :func:`gspdml.evaluation.compute_retrieval_metrics` searches chunk by chunk.

    Returns:
        ``(embeddings (N, D) float32 on CPU -- or the memmap with ``out`` --, labels (N,) int64)``
        and, with ``return_details``, a third element: dict of concatenated CPU tensors.
    """
    if out is not None and (return_details or (ctx is not None and ctx.enabled)):
        raise InputError("embed_dataset: out= (memory-mapped embeddings) works in one process and without "
                         "return_details")
    if ctx is not None and ctx.enabled:
        if return_details:
            raise InputError("embed_dataset: return_details is not available across ranks")
        total = len(dataset)
        shard = Subset(dataset, list(range(ctx.rank, total, ctx.world_size)))
        emb, labels = embed_dataset(model, shard, batch_size, device, False, num_workers,
                                    progress and ctx.is_main, desc, precision)
        return all_gather_ordered(emb, ctx, total), all_gather_ordered(labels, ctx, total)
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size}")
    if len(dataset) == 0:
        raise InputError("cannot embed an empty dataset")
    device = _model_device(model) if device is None else torch.device(device)
    dtype = autocast_dtype(precision, device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # never draws from the global RNG (keeps resumed runs exact)
    )
    from tqdm.auto import tqdm

    embs, labels = [], []
    details: dict[str, list[torch.Tensor]] = {}
    store, filled = None, 0
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            x, mask, y = split_batch(batch)
            x, mask = move_input(x, mask, device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if return_details:
                    emb, det = model(x, mask=mask, return_details=True)
                    for key, val in (det or {}).items():
                        if isinstance(val, torch.Tensor):
                            details.setdefault(key, []).append(val.detach().float().cpu())
                else:
                    emb = model(x, mask=mask)
            emb = emb.detach().float().cpu()
            if out is None:
                embs.append(emb)
            else:
                if store is None:
                    Path(out).parent.mkdir(parents=True, exist_ok=True)
                    store = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                                      shape=(len(dataset), emb.shape[1]))
                store[filled:filled + len(emb)] = emb.numpy()
                filled += len(emb)
            labels.append(y.cpu().long())
    finally:
        model.train(was_training)
    if out is not None:
        store.flush()
        del store
        return np.load(out, mmap_mode="r"), torch.cat(labels)
    emb_all = torch.cat(embs)
    lab_all = torch.cat(labels)
    if return_details:
        return emb_all, lab_all, {k: torch.cat(v) for k, v in details.items()}
    return emb_all, lab_all


class EmbeddedSplits(NamedTuple):
    """Query embeddings and labels, and the gallery's (``None`` for self-retrieval)."""

    query: torch.Tensor | np.memmap
    query_labels: torch.Tensor
    gallery: torch.Tensor | np.memmap | None = None
    gallery_labels: torch.Tensor | None = None

    def metrics(self, recall_ks=(1, 2, 4, 8), extra_metrics=(), *, knn: str = "auto",
                chunk_size: int | None = None) -> dict[str, float]:
        """The retrieval metrics of the queries against the gallery (or against themselves);
        ``extra_metrics``: ``nmi``, ``map_at_<K>`` (``eval.metrics``); ``knn``, ``chunk_size``: the
        kNN backend and chunk rows (:func:`gspdml.evaluation.compute_retrieval_metrics`)."""
        return compute_retrieval_metrics(self.query, self.query_labels, self.gallery, self.gallery_labels,
                                         recall_ks=recall_ks, extra_metrics=extra_metrics, knn=knn,
                                         chunk_size=chunk_size)


@contextmanager
def memmap_folder(parent: str | os.PathLike | None):
    """A fresh temporary folder under ``parent`` (created if missing) for memory-mapped embeddings;
    removed with its files on exit. ``parent=None`` yields ``None`` (embed in RAM)."""
    if parent is None:
        yield None
        return
    Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gspdml_embeddings_", dir=parent) as folder:
        yield Path(folder)


def embed_query_gallery(model: torch.nn.Module, query: Dataset, gallery: Dataset | None = None, *,
                        desc: str = "eval", folder: str | os.PathLike | None = None, **options) -> EmbeddedSplits:
    """Embed ``query`` (and ``gallery``) with ``model``; ``options`` are :func:`embed_dataset`'s
    (``batch_size``, ``device``, ``progress``, ``num_workers``, ``precision``, ``ctx``). With
    ``folder``, the embeddings are written there memory-mapped (``query.npy``, ``gallery.npy``)."""
    def where(name):
        return None if folder is None else Path(folder) / f"{name}.npy"

    q, ql = embed_dataset(model, query, desc=f"{desc} query" if gallery is not None else desc, out=where("query"),
                          **options)
    if gallery is None:
        return EmbeddedSplits(q, ql)
    return EmbeddedSplits(q, ql, *embed_dataset(model, gallery, desc=f"{desc} gallery", out=where("gallery"),
                                                **options))


def evaluate_model(
    model: torch.nn.Module,
    query: Dataset,
    gallery: Dataset | None = None,
    *,
    batch_size: int = 64,
    recall_ks=(1, 2, 4, 8),
    extra_metrics=(),
    device: torch.device | str | None = None,
    progress: bool = True,
    num_workers: int = 0,
    precision: Precision = "fp32",
    ctx: DistContext | None = None,
    desc: str = "eval",
    refuse_collapsed: bool = False,
    knn: str = "auto",
    chunk_size: int | None = None,
    memmap_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Embed ``query`` (and ``gallery``) and return the retrieval metrics (see :class:`EmbeddedSplits`).

    ``precision``: autocast precision (:func:`autocast_dtype`, default fp32). ``refuse_collapsed``:
    InputError instead of chance-level metrics when the embeddings are degenerate
    (:func:`check_not_collapsed`; ``gspdml eval`` sets it). ``knn``, ``chunk_size``: the kNN
    backend and rows per query/gallery chunk. ``memmap_dir``: write the embeddings memory-mapped
    to a temporary folder under it (removed afterwards) and search them chunk by chunk, for
    galleries larger than RAM (one process only)."""
    with memmap_folder(memmap_dir) as folder:
        emb = embed_query_gallery(model, query, gallery, batch_size=batch_size, device=device, progress=progress,
                                  num_workers=num_workers, precision=precision, ctx=ctx, desc=desc, folder=folder)
        if refuse_collapsed:
            check_not_collapsed(emb.query, f"{desc} query" if gallery is not None else desc)
            if emb.gallery is not None:
                check_not_collapsed(emb.gallery, f"{desc} gallery")
        metrics = emb.metrics(recall_ks, extra_metrics, knn=knn, chunk_size=chunk_size)
        del emb  # close the memmaps before the folder goes
    return metrics


def check_not_collapsed(embeddings: torch.Tensor, what: str = "embeddings", tol: float = 1e-6) -> None:
    """InputError when ``embeddings`` (N, D) carry no information: NaN/inf values, every row of
    (near) zero norm, or every row identical (within ``tol``) -- the output of a diverged or
    collapsed model, whose retrieval metrics would be chance level. A (memory-mapped) numpy
    array is checked chunk by chunk."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InputError(f"{what}: expected embeddings of shape (N, D) with N >= 1, got {tuple(embeddings.shape)}")
    if isinstance(embeddings, np.ndarray):
        _check_array_not_collapsed(embeddings, what, tol)
        return
    emb = embeddings.detach().float()
    n = emb.shape[0]
    if not bool(torch.isfinite(emb).all()):
        bad = int((~torch.isfinite(emb)).any(1).sum())
        raise InputError(f"{what}: {bad} of {n} embeddings hold NaN or infinite values; the model is broken "
                         "(a diverged checkpoint?)")
    norms = emb.norm(dim=1)
    if float(norms.max()) <= tol:
        raise InputError(f"{what}: all {n} embeddings have zero norm; the model's output carries no information "
                         "(a diverged or collapsed checkpoint?) and its metrics would be chance level")
    if n > 1 and float((emb - emb[0]).abs().max()) <= tol:
        raise InputError(f"{what}: all {n} embeddings are identical; the model maps every input to the same point "
                         "(a diverged or collapsed checkpoint?) and its metrics would be chance level")


def _check_array_not_collapsed(embeddings: np.ndarray, what: str, tol: float, chunk: int = 65_536) -> None:
    """:func:`check_not_collapsed` for a numpy (memory-mapped) array, one chunk at a time."""
    n = embeddings.shape[0]
    first = torch.from_numpy(np.array(embeddings[:1], dtype=np.float32))
    bad, max_norm, max_dev = 0, 0.0, 0.0
    for start in range(0, n, chunk):
        emb = torch.from_numpy(np.array(embeddings[start:start + chunk], dtype=np.float32))
        bad += int((~torch.isfinite(emb)).any(1).sum())
        if bad:
            continue
        max_norm = max(max_norm, float(emb.norm(dim=1).max()))
        max_dev = max(max_dev, float((emb - first).abs().max()))
    if bad:
        raise InputError(f"{what}: {bad} of {n} embeddings hold NaN or infinite values; the model is broken "
                         "(a diverged checkpoint?)")
    if max_norm <= tol:
        raise InputError(f"{what}: all {n} embeddings have zero norm; the model's output carries no information "
                         "(a diverged or collapsed checkpoint?) and its metrics would be chance level")
    if n > 1 and max_dev <= tol:
        raise InputError(f"{what}: all {n} embeddings are identical; the model maps every input to the same point "
                         "(a diverged or collapsed checkpoint?) and its metrics would be chance level")
