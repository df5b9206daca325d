"""``gspdml bench eval``: MAP@R evaluation time, ours (PML + faiss) vs a plain-torch brute force.

Synthetic data shaped like Stanford Online Products' test set: 60,000 L2-normalised 128-D
embeddings in ~11,000 classes (2-10 samples each), each class a noisy cluster so the metrics are
neither 0 nor 1. Both implementations run in the same process on the same data, are checked to
give the same numbers, and are timed (best of ``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

__all__ = ["add_arguments", "run", "synthetic_embeddings", "bench_eval"]


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
    from gspdml.evaluation.metrics import compute_retrieval_metrics
    from gspdml.evaluation.naive import naive_retrieval_metrics

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=60_000, help="number of embeddings (default 60,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=11_000, help="number of classes (default 11,000)")
    parser.add_argument("--repeats", type=int, default=1, help="time the best of N runs")
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny version: 6,000 x 128, 1,100 classes")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")


def run(args: argparse.Namespace) -> int:
    from gspdml.errors import InputError

    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss

        faiss.omp_set_num_threads(args.threads)
    num, classes = (6_000, 1_100) if args.quick else (args.num, args.classes)
    if num < 4 or classes < 2 or classes * 2 > num:
        raise InputError(f"need at least 2 samples per class: --num {num} --classes {classes}")
    res = bench_eval(num, args.dim, classes, repeats=max(args.repeats, 1))
    print(f"MAP@R evaluation on {res['num_embeddings']:,} x {res['dim']} embeddings, {res['num_classes']:,} classes "
          f"(max class size {res['max_class_size']}), {res['threads']} threads")
    print(f"  ours (PML AccuracyCalculator + faiss kNN): {res['ours_s']:8.2f} s")
    print(f"  plain torch brute force               : {res['naive_s']:8.2f} s")
    print(f"  speed-up {res['speedup']:.2f}x; metrics agree to {res['max_abs_difference']:.1e} "
          f"(MAP@R {res['metrics']['map_at_r']:.4f}, P@1 {res['metrics']['precision_at_1']:.4f})")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
