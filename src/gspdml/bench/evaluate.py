"""``gspdml bench eval``: MAP@R evaluation time, ours (PML + faiss) vs a plain-torch brute force.

Synthetic data shaped like Stanford Online Products' test set: 60,000 L2-normalised 128-D
embeddings in ~11,000 classes (2-10 samples each), each class a noisy cluster so the metrics are
neither 0 nor 1. Both implementations run in the same process on the same data, are checked to
give the same numbers, and are timed (best of ``--repeats``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["synthetic_embeddings", "bench_eval", "report"]


def synthetic_embeddings(num: int = 60_000, dim: int = 128, num_classes: int = 11_000, noise: float = 1.5,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` unit vectors in ``num_classes`` noisy clusters (class sizes 2..10, like SOP)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 11, size=num_classes)
    sizes = np.maximum(np.round(sizes * num / sizes.sum()).astype(int), 2)
    labels = np.repeat(np.arange(num_classes), sizes)
    if len(labels) > num:
        labels = labels[:num]
    elif len(labels) < num:
        labels = np.concatenate([labels, rng.integers(0, num_classes, num - len(labels))])
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    x = centers[torch.from_numpy(labels)] + noise * torch.randn(num, dim, generator=g) / dim ** 0.5
    return torch.nn.functional.normalize(x, dim=1), torch.from_numpy(labels).long()


def _time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_eval(num: int = 60_000, dim: int = 128, num_classes: int = 11_000, repeats: int = 1, seed: int = 0) -> dict:
    """Time both implementations on the same synthetic embeddings; return a result dict."""
    from gspdml.errors import InputError
    from gspdml.evaluation.metrics import compute_retrieval_metrics
    from gspdml.evaluation.naive import naive_retrieval_metrics

    if num < 4 or num_classes < 2 or num_classes * 2 > num:
        raise InputError(f"need at least 2 samples per class: {num} embeddings, {num_classes} classes")
    repeats = max(int(repeats), 1)

    x, y = synthetic_embeddings(num, dim, num_classes, seed=seed)
    wx, wy = synthetic_embeddings(600, dim, 100, seed=seed + 1)  # warm-up: imports, faiss/BLAS init
    compute_retrieval_metrics(wx, wy)
    naive_retrieval_metrics(wx, wy)
    t_ours, ours = _time(lambda: compute_retrieval_metrics(x, y), repeats)
    t_naive, naive = _time(lambda: naive_retrieval_metrics(x, y), repeats)
    max_diff = max(abs(ours[k] - naive[k]) for k in ours)
    return {
        "num_embeddings": int(num), "dim": int(dim), "num_classes": int(len(torch.unique(y))),
        "max_class_size": int(torch.bincount(y).max()), "threads": torch.get_num_threads(),
        "ours_s": t_ours, "naive_s": t_naive, "speedup": t_naive / t_ours,
        "metrics": ours, "max_abs_difference": max_diff,
    }


def report(res: dict) -> str:
    """The printed summary of :func:`bench_eval`'s result."""
    return "\n".join([
        f"MAP@R evaluation on {res['num_embeddings']:,} x {res['dim']} embeddings, {res['num_classes']:,} classes "
        f"(max class size {res['max_class_size']}), {res['threads']} threads",
        f"  ours (PML AccuracyCalculator + faiss kNN): {res['ours_s']:8.2f} s",
        f"  plain torch brute force               : {res['naive_s']:8.2f} s",
        f"  speed-up {res['speedup']:.2f}x; metrics agree to {res['max_abs_difference']:.1e} "
        f"(MAP@R {res['metrics']['map_at_r']:.4f}, P@1 {res['metrics']['precision_at_1']:.4f})",
    ])
