"""The batch contract of gspdml: a dataset item is ``(input, label)``; ``input`` is a tensor or a
dict with ``"x"`` (or ``"tokens"``) and an optional ``"mask"`` (token sets with padding)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gspdml.errors import InputError

__all__ = ["split_batch", "move_input", "dataset_labels"]


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None, torch.Tensor]:
    """Split a collated ``(input, label)`` batch into ``(x, mask, labels)``.

    ``input`` is a tensor, or a dict with ``"x"`` (or ``"tokens"``) and optional ``"mask"`` for
    token sets with padding.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InputError(
            "a dataset item must be a pair (input, label); "
            f"got a batch of type {type(batch).__name__} with {len(batch) if hasattr(batch, '__len__') else '?'} parts"
        )
    inputs, labels = batch
    mask = None
    if isinstance(inputs, dict):
        mask = inputs.get("mask")
        x = inputs.get("x", inputs.get("tokens"))
        if x is None:
            raise InputError(f"a dict input must have key 'x' or 'tokens' (+ optional 'mask'); got keys {sorted(inputs)}")
    else:
        x = inputs
    return x, mask, torch.as_tensor(labels)

def move_input(x, mask, device, non_blocking: bool = False):
    """Move ``x`` and ``mask`` (if any) to ``device``."""
    x = x.to(device, non_blocking=non_blocking)
    if mask is not None:
        mask = mask.to(device, non_blocking=non_blocking)
    return x, mask

def dataset_labels(dataset) -> np.ndarray:
    """The ``labels`` array of a gspdml dataset (or of a Subset of one), without loading items."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels)
    base, idx = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if base is not None and idx is not None:
        return dataset_labels(base)[np.asarray(idx)]
    raise InputError(f"dataset {type(dataset).__name__} has no 'labels' attribute (needed for class-balanced batches)")
