"""MLRC folds, class halves and class subsets."""
from __future__ import annotations

import numpy as np
import pytest

from engine_fixtures import Blobs
from gspdml.data import mlrc_folds, relabeled, subset_by_classes
from gspdml.data.splits import split_classes_in_half, split_train_val
from gspdml.errors import InputError


def test_mlrc_folds_are_contiguous_quarters():
    classes = [7, 3, 1, 9, 5, 11, 13, 15, 2, 4, 3]  # unsorted, with a duplicate: 10 distinct
    folds = mlrc_folds(classes, 4)
    srt = [1, 2, 3, 4, 5, 7, 9, 11, 13, 15]
    expected_val = [[1, 2, 3], [4, 5, 7], [9, 11], [13, 15]]  # np.array_split sizes 3,3,2,2
    assert [v for _, v in folds] == expected_val
    for train, val in folds:
        assert sorted(train + val) == srt and not set(train) & set(val)
    assert folds[1][0] == [1, 2, 3, 9, 11, 13, 15]


def test_mlrc_folds_cub_like():
    folds = mlrc_folds(range(100), 4)
    assert [v[0] for _, v in folds] == [0, 25, 50, 75] and all(len(t) == 75 for t, _ in folds)
    with pytest.raises(InputError, match="from 3 classes"):
        mlrc_folds([1, 2, 3], 4)


def test_class_halves():
    assert split_classes_in_half(range(1, 201)) == (list(range(1, 101)), list(range(101, 201)))
    assert split_classes_in_half([5, 1, 3]) == ([1, 3], [5])


class _Toy:
    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.class_names = [f"c{i}" for i in range(self.labels.max() + 1)]
        self.paths = [f"p{i}" for i in range(len(labels))]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return f"x{i}", int(self.labels[i])


def test_subset_by_classes_relabels():
    ds = _Toy([0, 3, 1, 3, 2, 0, 1])
    sub = subset_by_classes(ds, [3, 1])
    assert sub.indices.tolist() == [1, 2, 3, 6]
    assert sub.labels.tolist() == [1, 0, 1, 0] and sub.num_classes == 2
    assert sub.class_names == ["c1", "c3"] and sub.paths == ["p1", "p2", "p3", "p6"]
    assert [sub[i] for i in range(4)] == [("x1", 1), ("x2", 0), ("x3", 1), ("x6", 0)]
    raw = subset_by_classes(ds, [3, 1], relabel=False)
    assert raw.labels.tolist() == [3, 1, 3, 1]
    with pytest.raises(InputError, match=r"\[7\]"):
        subset_by_classes(ds, [1, 7])


def test_split_train_val():
    ds = _Toy(np.repeat(np.arange(8), 2))
    train, val = split_train_val(ds, fold=1)
    assert val.indices.tolist() == [4, 5, 6, 7] and val.labels.tolist() == [0, 0, 1, 1]
    assert train.num_classes == 6 and sorted(set(train.labels.tolist())) == list(range(6))


def test_relabeled_dataset_maps_to_contiguous_ids():
    """The one relabelling: original ids 7, 8, 9 become 0, 1, 2; items carry the new label."""
    ds = relabeled(Blobs(3, 2, first_class=7))
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.num_classes == 3
    assert ds[3][1] == 1
