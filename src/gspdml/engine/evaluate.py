"""Embedding and evaluation with a model: :func:`embed_dataset` (eval mode, no gradients, tqdm
progress, sharded over ranks under torchrun), :func:`embed_query_gallery` and
:func:`evaluate_model`, the one "embed queries (and gallery), then compute the retrieval metrics"
used by the trainer, the protocol, the demo and ``gspdml eval``."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gspdml.data.batches import move_input, split_batch
from gspdml.engine.distributed import DistContext, all_gather_ordered
from gspdml.errors import InputError
from gspdml.evaluation.metrics import compute_retrieval_metrics

__all__ = ["embed_dataset", "EmbeddedSplits", "embed_query_gallery", "evaluate_model"]


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
    amp: bool = False,
    ctx: DistContext | None = None,
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
        amp: autocast to float16 on CUDA.
        ctx: under torchrun, each rank embeds a strided shard and every rank gets the whole
            result in dataset order (no ``return_details`` then).

    Returns:
        ``(embeddings (N, D) float32 on CPU, labels (N,) int64)`` and, with ``return_details``,
        a third element: dict of concatenated CPU tensors.
    """
    if ctx is not None and ctx.enabled:
        if return_details:
            raise InputError("embed_dataset: return_details is not available across ranks")
        total = len(dataset)
        shard = Subset(dataset, list(range(ctx.rank, total, ctx.world_size)))
        emb, labels = embed_dataset(model, shard, batch_size, device, False, num_workers,
                                    progress and ctx.is_main, desc, amp)
        return all_gather_ordered(emb, ctx, total), all_gather_ordered(labels, ctx, total)
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size}")
    if len(dataset) == 0:
        raise InputError("cannot embed an empty dataset")
    device = _model_device(model) if device is None else torch.device(device)
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
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            x, mask, y = split_batch(batch)
            x, mask = move_input(x, mask, device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                if return_details:
                    emb, det = model(x, mask=mask, return_details=True)
                    for key, val in (det or {}).items():
                        if isinstance(val, torch.Tensor):
                            details.setdefault(key, []).append(val.detach().float().cpu())
                else:
                    emb = model(x, mask=mask)
            embs.append(emb.detach().float().cpu())
            labels.append(y.cpu().long())
    finally:
        model.train(was_training)
    emb_all = torch.cat(embs)
    lab_all = torch.cat(labels)
    if return_details:
        return emb_all, lab_all, {k: torch.cat(v) for k, v in details.items()}
    return emb_all, lab_all


class EmbeddedSplits(NamedTuple):
    """Query embeddings and labels, and the gallery's (``None`` for self-retrieval)."""

    query: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor | None = None
    gallery_labels: torch.Tensor | None = None

    def metrics(self, recall_ks=(1, 2, 4, 8)) -> dict[str, float]:
        """The retrieval metrics of the queries against the gallery (or against themselves)."""
        return compute_retrieval_metrics(self.query, self.query_labels, self.gallery, self.gallery_labels,
                                         recall_ks=recall_ks)


def embed_query_gallery(model: torch.nn.Module, query: Dataset, gallery: Dataset | None = None, *,
                        desc: str = "eval", **options) -> EmbeddedSplits:
    """Embed ``query`` (and ``gallery``) with ``model``; ``options`` are :func:`embed_dataset`'s
    (``batch_size``, ``device``, ``progress``, ``num_workers``, ``amp``, ``ctx``)."""
    q, ql = embed_dataset(model, query, desc=f"{desc} query" if gallery is not None else desc, **options)
    if gallery is None:
        return EmbeddedSplits(q, ql)
    return EmbeddedSplits(q, ql, *embed_dataset(model, gallery, desc=f"{desc} gallery", **options))


def evaluate_model(
    model: torch.nn.Module,
    query: Dataset,
    gallery: Dataset | None = None,
    *,
    batch_size: int = 64,
    recall_ks=(1, 2, 4, 8),
    device: torch.device | str | None = None,
    progress: bool = True,
    num_workers: int = 0,
    amp: bool = False,
    ctx: DistContext | None = None,
    desc: str = "eval",
) -> dict[str, float]:
    """Embed ``query`` (and ``gallery``) and return the retrieval metrics (see :class:`EmbeddedSplits`)."""
    return embed_query_gallery(model, query, gallery, batch_size=batch_size, device=device, progress=progress,
                               num_workers=num_workers, amp=amp, ctx=ctx, desc=desc).metrics(recall_ks)
