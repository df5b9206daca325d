"""The MLRC collections (one model per fold, R^K of them) against a brute-force recomputation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gspdml.errors import InputError
from gspdml.evaluation.metrics import compute_retrieval_metrics
from gspdml.evaluation.mlrc import (collection_choices, collection_dim128, collection_dim512, collection_metrics,
                                    concat_embeddings, summarize)


def _embeddings(num_repeats, num_folds, labels, dim=6, seed=0):
    """Per-(repeat, fold) embeddings of one test set: class centres plus model-specific noise."""
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(int(labels.max()) + 1, dim))
    return [[torch.from_numpy((centres[labels] + 1.3 * gen.normal(size=(len(labels), dim))).astype(np.float32))
             for _ in range(num_folds)] for _ in range(num_repeats)]


def _np_concat(parts):
    """The 512D embedding by hand: normalise each, stack side by side, normalise."""
    unit = [p.numpy() / np.linalg.norm(p.numpy(), axis=1, keepdims=True) for p in parts]
    cat = np.concatenate(unit, axis=1)
    return torch.from_numpy(cat / np.linalg.norm(cat, axis=1, keepdims=True))


def _brute_force(query, query_labels, gallery=None, gallery_labels=None):
    num_repeats, num_folds = len(query), len(query[0])

    def metrics(q, g):
        return compute_retrieval_metrics(q, query_labels, g, gallery_labels)

    per_fold = [[metrics(query[r][k], None if gallery is None else gallery[r][k]) for k in range(num_folds)]
                for r in range(num_repeats)]
    choices, rows128, rows512 = [], [], []
    for choice in itertools.product(range(num_repeats), repeat=num_folds):
        choices.append(list(choice))
        fold_rows = [per_fold[choice[k]][k] for k in range(num_folds)]
        rows128.append({m: float(np.mean([row[m] for row in fold_rows])) for m in fold_rows[0]})
        q = _np_concat([query[choice[k]][k] for k in range(num_folds)])
        g = None if gallery is None else _np_concat([gallery[choice[k]][k] for k in range(num_folds)])
        rows512.append(metrics(q, g))
    return per_fold, choices, rows128, rows512


def _assert_rows(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        assert a == pytest.approx(b, abs=1e-6)


def _assert_summary(summary, rows128, rows512):
    for dim, rows in (("128D", rows128), ("512D", rows512)):
        for m in rows[0]:
            vals = np.array([row[m] for row in rows])
            assert summary[dim][m]["mean"] == pytest.approx(vals.mean(), abs=1e-9)
            assert summary[dim][m]["std"] == pytest.approx(vals.std(ddof=1), abs=1e-9)


def test_81_collections_match_brute_force_self_retrieval():
    labels = np.repeat(np.arange(5), 4)
    query = _embeddings(3, 4, labels)
    per_fold, choices, rows128, rows512 = _brute_force(query, torch.from_numpy(labels))
    calls = []

    def metric_fn(q, g):
        calls.append((tuple(q.shape), g))
        return compute_retrieval_metrics(q, torch.from_numpy(labels))

    res = collection_metrics(per_fold, query, metric_fn)
    assert len(res["choices"]) == 81 and res["choices"] == choices
    assert res["choices"][0] == [0, 0, 0, 0] and res["choices"][-1] == [2, 2, 2, 2]
    assert calls == [((20, 24), None)] * 81  # one 4 x 6 = 24-D concatenation per collection
    _assert_rows(res["128D"], rows128)
    _assert_rows(res["512D"], rows512)
    _assert_summary(res["summary"], rows128, rows512)
    # the collections are not all the same (the check is not vacuous)
    assert len({round(row["map_at_r"], 9) for row in res["512D"]}) > 1
    assert res["summary"]["512D"]["map_at_r"]["std"] > 0
    # the 128D mean over the collections equals the per-repeat mean (each model appears equally
    # often); the collections' std is not the repeats'
    per_repeat = [rows128[choices.index([r] * 4)] for r in range(3)]
    assert res["summary"]["128D"]["map_at_r"]["mean"] == pytest.approx(summarize(per_repeat)["map_at_r"]["mean"])
    assert res["summary"]["128D"]["map_at_r"]["std"] != pytest.approx(summarize(per_repeat)["map_at_r"]["std"])


def test_collections_with_query_and_gallery_match_brute_force():
    query_labels = np.repeat(np.arange(4), 3)
    gallery_labels = np.repeat(np.arange(4), 5)
    query = _embeddings(2, 3, query_labels, seed=1)
    gallery = _embeddings(2, 3, gallery_labels, seed=2)
    ql, gl = torch.from_numpy(query_labels), torch.from_numpy(gallery_labels)
    per_fold, choices, rows128, rows512 = _brute_force(query, ql, gallery, gl)
    res = collection_metrics(per_fold, query, lambda q, g: compute_retrieval_metrics(q, ql, g, gl), gallery)
    assert len(choices) == 2 ** 3 and res["choices"] == choices
    _assert_rows(res["128D"], rows128)
    _assert_rows(res["512D"], rows512)
    _assert_summary(res["summary"], rows128, rows512)
    assert len({round(row["map_at_r"], 9) for row in res["512D"]}) > 1


def test_numpy_embeddings_and_a_subset_of_choices():
    labels = np.repeat(np.arange(3), 4)
    query = _embeddings(2, 2, labels, seed=3)
    arrays = [[e.numpy() for e in row] for row in query]
    fn = lambda q, g: compute_retrieval_metrics(q, torch.from_numpy(labels))  # noqa: E731
    rows = collection_dim512(arrays, fn, choices=[(1, 0)])
    assert rows[0] == pytest.approx(compute_retrieval_metrics(_np_concat([query[1][0], query[0][1]]),
                                                              torch.from_numpy(labels)))
    per_fold = [[{"a": 0.1, "b": 1.0}, {"a": 0.3, "b": 2.0}], [{"a": 0.5, "b": 3.0}, {"a": 0.9, "b": 4.0}]]
    assert collection_dim128(per_fold) == [pytest.approx({"a": 0.2, "b": 1.5}), pytest.approx({"a": 0.5, "b": 2.5}),
                                           pytest.approx({"a": 0.4, "b": 2.5}), pytest.approx({"a": 0.7, "b": 3.5})]


def test_one_repeat_is_one_collection():
    labels = np.repeat(np.arange(4), 3)
    query = _embeddings(1, 4, labels, seed=4)
    per_fold, _, rows128, rows512 = _brute_force(query, torch.from_numpy(labels))
    res = collection_metrics(per_fold, query, lambda q, g: compute_retrieval_metrics(q, torch.from_numpy(labels)))
    assert res["choices"] == [[0, 0, 0, 0]]
    assert res["512D"][0] == pytest.approx(compute_retrieval_metrics(concat_embeddings(query[0]),
                                                                     torch.from_numpy(labels)))
    assert all(v["std"] == 0.0 for v in res["summary"]["512D"].values())


def test_collection_choices_order_and_count():
    assert collection_choices(3, 4) == list(itertools.product(range(3), repeat=4))
    assert len(collection_choices(3, 4)) == 81 and len(collection_choices(2, 1)) == 2


def test_bad_inputs_are_input_errors():
    labels = np.repeat(np.arange(3), 2)
    query = _embeddings(2, 2, labels)
    fn = lambda q, g: {}  # noqa: E731
    with pytest.raises(InputError, match="folds"):
        collection_dim128([[{"a": 1.0}, {"a": 1.0}], [{"a": 1.0}]])
    with pytest.raises(InputError, match="metrics"):
        collection_dim128([[{"a": 1.0}], [{"b": 1.0}]])
    with pytest.raises(InputError, match="collection"):
        collection_dim128([[{"a": 1.0}]], choices=[(1,)])
    with pytest.raises(InputError, match="gallery"):
        collection_dim512(query, fn, gallery=[query[0]])
    with pytest.raises(InputError, match="rows"):
        collection_dim512([[query[0][0], query[0][1]], [query[1][0], query[1][1][:3]]], fn)
    with pytest.raises(InputError, match="per_fold"):
        collection_metrics([[{"a": 1.0}]], query, fn)
    with pytest.raises(InputError, match="repeat"):
        collection_choices(0, 4)
