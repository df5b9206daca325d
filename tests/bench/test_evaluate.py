"""The evaluation benchmark's data generator and its side-by-side comparison (no timing asserted)."""
from __future__ import annotations

import torch

from gspdml.bench.evaluate import bench_eval, synthetic_embeddings


def test_synthetic_embeddings_shape_and_class_sizes():
    x, y = synthetic_embeddings(num=1_000, dim=16, num_classes=180, seed=1)
    assert x.shape == (1_000, 16) and y.shape == (1_000,)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(1_000))
    counts = torch.bincount(y)
    assert len(counts) == 180 and counts.min() >= 2 and counts.max() <= 12


def test_bench_eval_runs_both_implementations_and_they_agree():
    res = bench_eval(num=800, dim=128, num_classes=140, repeats=1)
    assert res["max_abs_difference"] < 1e-6
    assert res["ours_s"] > 0 and res["naive_s"] > 0
    assert 0.05 < res["metrics"]["map_at_r"] < 0.95  # clusters are noisy enough to be informative
