"""Retrieval metrics against hand-computed cases and an independent brute-force implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gspdml.errors import InputError
from gspdml.evaluation.metrics import compute_retrieval_metrics
from gspdml.evaluation.naive import naive_retrieval_metrics
from gspdml.evaluation.mlrc import concat_embeddings, format_table, summarize


def _points(xs):
    return torch.tensor(xs, dtype=torch.float32)[:, None]


def test_self_retrieval_hand_computed():
    # 1-D embeddings, two classes of 3 (R = 2 for every query); no distance ties.
    #   A: 0, 1, 4.2        B: 2.3, 5.0, 9.5
    # neighbour classes in order (self excluded) and the per-query values:
    #   0   : A B A B B   RP 1/2  AP@R (1/1)/2 = .5   P@1 1  first hit 1
    #   1   : A B A B B   RP 1/2  .5                  1      1
    #   4.2 : B B A A B   RP 0    0                   0      3
    #   2.3 : A A A B B   RP 0    0                   0      4
    #   5.0 : A B A B A   RP 1/2  (1/2)/2 = .25       0      2
    #   9.5 : B A B A A   RP 1/2  .5                  1      1
    x = _points([0.0, 1.0, 4.2, 2.3, 5.0, 9.5])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    m = compute_retrieval_metrics(x, y, recall_ks=(1, 2, 3, 4))
    assert m["map_at_r"] == pytest.approx(1.75 / 6)
    assert m["r_precision"] == pytest.approx(2 / 6)
    assert m["precision_at_1"] == pytest.approx(3 / 6)
    assert m["recall_at_1"] == pytest.approx(3 / 6)
    assert m["recall_at_2"] == pytest.approx(4 / 6)
    assert m["recall_at_3"] == pytest.approx(5 / 6)
    assert m["recall_at_4"] == pytest.approx(1.0)
    assert set(m) == {"map_at_r", "r_precision", "precision_at_1", "recall_at_1", "recall_at_2", "recall_at_3",
                      "recall_at_4"}


def test_map_at_r_with_larger_class():
    # class A has 4 members (R = 3); query 0 ranks A B A A B ... -> AP@R = (1/1 + 2/3) / 3, RP = 2/3
    x = _points([0.0, 1.0, 1.5, 2.2, 2.6, 40.0, 50.0])
    y = torch.tensor([0, 1, 0, 0, 1, 0, 1])
    m = compute_retrieval_metrics(x[:5], y[:5])  # A: 0, 1.5, 2.2 (R=2); B: 1, 2.6 (R=1)
    # q0 : 1(B) 1.5(A) 2.2(A)      R=2 -> [B A]: AP (1/2)/2=.25, RP .5, P@1 0
    # q1 : 1.5(A).5 0(A)1 2.2(A)1.2 2.6(B)1.6 R=1 -> [A]: 0, 0, 0
    # q1.5: 1(B).5 2.2(A).7 2.6(B)1.1 0 R=2 -> [B A]: .25, .5, 0
    # q2.2: 2.6(B).4 1.5(A).7 1(B)1.2 R=2 -> [B A]: .25, .5, 0
    # q2.6: 2.2(A).4 1.5(A)1.1 1(B)1.6 R=1 -> [A]: 0, 0, 0
    assert m["map_at_r"] == pytest.approx(0.75 / 5)
    assert m["r_precision"] == pytest.approx(1.5 / 5)
    assert m["precision_at_1"] == pytest.approx(0.0)
    # A: 0, 1.1, 3.3, 6 (R = 3); B: 2, 4.7 (R = 1)
    # q0  : A(1.1) B(2) A(3.3)       AP (1 + 2/3)/3 = 5/9   RP 2/3  P@1 1
    # q1.1: B(.9) A(1.1) A(2.2)      AP (1/2 + 2/3)/3 = 7/18 RP 2/3  P@1 0
    # q3.3: B(1.3) B(1.4) A(2.2)     AP (1/3)/3 = 1/9       RP 1/3  P@1 0
    # q6  : B(1.3) A(2.7) B(4)       AP (1/2)/3 = 1/6       RP 1/3  P@1 0
    # q2, q4.7 (B): nearest is A     0                      0       0
    m = compute_retrieval_metrics(_points([0.0, 1.1, 3.3, 6.0, 2.0, 4.7]), torch.tensor([0, 0, 0, 0, 1, 1]))
    assert m["map_at_r"] == pytest.approx((5 / 9 + 7 / 18 + 1 / 9 + 1 / 6) / 6)
    assert m["r_precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 6)
    assert m["precision_at_1"] == pytest.approx(1 / 6)


def test_query_gallery_hand_computed_and_lone_queries_excluded():
    gallery = _points([0.0, 3.0, 1.0, 2.5])
    g_labels = torch.tensor([0, 0, 1, 1])
    # qA 0.9: B(.1) A(.9) B(1.6) A(2.1)  -> R=2: [B A]  AP .25  RP .5  P@1 0  R@2 1
    # qB 2.9: A(.1) B(.4) B(1.9) A(2.9)  -> R=2: [A B]  AP .25  RP .5  P@1 0  R@2 1
    # qC 7.0: class 2 is not in the gallery -> left out
    query = _points([0.9, 2.9, 7.0])
    q_labels = torch.tensor([0, 1, 2])
    m = compute_retrieval_metrics(query, q_labels, gallery, g_labels, recall_ks=(1, 2))
    assert m == pytest.approx({"map_at_r": 0.25, "r_precision": 0.5, "precision_at_1": 0.0,
                               "recall_at_1": 0.0, "recall_at_2": 1.0})


def test_agrees_with_brute_force_on_random_data():
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(400, 8, generator=g), dim=1)
    y = torch.randint(0, 37, (400,), generator=g)
    ours = compute_retrieval_metrics(x, y)
    ref = naive_retrieval_metrics(x, y)
    assert ours == pytest.approx(ref, abs=1e-9)
    q, ql = x[:150], y[:150]
    ours = compute_retrieval_metrics(q, ql, x[150:], y[150:], recall_ks=(1, 10))
    ref = naive_retrieval_metrics(q, ql, x[150:], y[150:], recall_ks=(1, 10))
    assert ours == pytest.approx(ref, abs=1e-9)


def test_perfect_embedding_scores_one_and_numpy_inputs():
    y = np.repeat(np.arange(5), 4)
    x = np.eye(5, dtype=np.float32)[y] + 0.01 * np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32)
    m = compute_retrieval_metrics(x, y)
    assert all(v == pytest.approx(1.0) for v in m.values())


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(4), torch.zeros(4, dtype=torch.long)), r"shape \(N, D\)"),
        ((torch.zeros(4, 2), torch.zeros(3, dtype=torch.long)), "3 entries but there are 4"),
        ((torch.zeros(4, 2), torch.zeros(4)), "integer class ids"),
        ((torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long)), "NaN"),
        ((torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)), "at least 2"),
        ((torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(3, 3), torch.zeros(3, dtype=torch.long)),
         "differ in dimension"),
        ((torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(3, 2)), "both reference"),
    ],
)
def test_bad_inputs(args, match):
    with pytest.raises(InputError, match=match):
        compute_retrieval_metrics(*args)


def test_concat_and_summary():
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0]])
    c = concat_embeddings([a, b])
    # normalise each part (.6 .8 | 0 1), concatenate, renormalise by sqrt(2)
    assert torch.allclose(c, torch.tensor([[0.6, 0.8, 0.0, 1.0]]) / 2 ** 0.5)
    s = summarize([{"map_at_r": 0.2}, {"map_at_r": 0.4}, {"map_at_r": 0.3}])
    assert s["map_at_r"]["mean"] == pytest.approx(0.3)
    assert s["map_at_r"]["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert summarize([{"map_at_r": 0.2}])["map_at_r"]["std"] == 0.0
    table = format_table({"128D": summarize([{"precision_at_1": .5, "r_precision": .25, "map_at_r": .125}]),
                          "512D": summarize([{"precision_at_1": .6, "r_precision": .3, "map_at_r": .2}])})
    assert "| 128D | 50.00 ± 0.00 | 25.00 ± 0.00 | 12.50 ± 0.00 |" in table


def test_agrees_with_pml_reference_calculator():
    # the vectorised bookkeeping must reproduce PML's own AccuracyCalculator (k = max_bin_count)
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 60, (500,), generator=g)
    x = torch.nn.functional.normalize(torch.randn(60, 16, generator=g)[y] + 0.8 * torch.randn(500, 16, generator=g), dim=1)
    y[0] = 999  # a singleton class: its query has no answer and is left out
    pml = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
                             k="max_bin_count", device=torch.device("cpu"))
    for args in ((x, y), (x[:200], y[:200], x[200:], y[200:])):
        ref = pml.get_accuracy(*args) if len(args) == 4 else pml.get_accuracy(x, y, x, y, ref_includes_query=True)
        ours = compute_retrieval_metrics(*args)
        assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-9)
        assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-9)
        assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
        assert 0.05 < ours["map_at_r"] < 0.95  # a non-trivial case
