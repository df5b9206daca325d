"""The evaluation benchmark's data generator and its side-by-side comparison (no timing asserted)."""
from __future__ import annotations

import torch

from gspdml.bench.evaluate import METHODS, bench_eval, report, synthetic_embeddings
from gspdml.evaluation.naive import naive_retrieval_metrics


def test_synthetic_embeddings_shape_and_class_sizes():
    x, y = synthetic_embeddings(num=1_000, dim=16, num_classes=180, seed=1)
    assert x.shape == (1_000, 16) and y.shape == (1_000,)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(1_000))
    counts = torch.bincount(y)
    assert len(counts) == 180 and counts.min() >= 2 and counts.max() <= 12


def test_bench_eval_runs_every_implementation_and_they_agree():
    res = bench_eval(num=800, dim=128, num_classes=140, repeats=1, gallery=2_000, gallery_queries=100)
    self_case, gallery_case = res["cases"]
    assert [r["method"] for r in self_case["rows"]] == list(METHODS)
    assert [r["method"] for r in gallery_case["rows"]] == ["ours", "ours_memmap", "pml", "naive"]
    assert gallery_case["num_queries"] == 100 and gallery_case["num_reference"] == 2_000
    for case in res["cases"]:
        for row in case["rows"]:
            assert row["max_abs_difference"] < 1e-6, (case["case"], row["method"])
            assert row["seconds"] > 0 and row["peak_mib"] >= 0
        assert 0.05 < case["metrics"]["map_at_r"] < 0.95  # clusters are noisy enough to be informative
    x, y = synthetic_embeddings(800, 128, 140, seed=0)  # ours equals the independent brute force
    ref = naive_retrieval_metrics(x, y)
    assert abs(self_case["metrics"]["map_at_r"] - ref["map_at_r"]) < 1e-9
    text = report(res)
    assert "PML stock AccuracyCalculator" in text and "peak MiB" in text and "2,000" in text
