"""CIFAR-10/100 (``gspdml.data.cifar``) from tiny pickles in the original layout."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_data import check_contract, index_of, make_cifar10, make_cifar100
from gspdml.data import build_dataset
from gspdml.errors import ConfigError, DataError


def test_cifar10_and_100(tmp_path):
    info10 = make_cifar10(tmp_path, per_batch=4)
    info100 = make_cifar100(tmp_path, train_per_fine=2, test_per_fine=1)
    ds = build_dataset("cifar10", tmp_path, "train")
    idx = np.concatenate([info10["truth"][f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((info10["truth"][f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert len(ds) == 20
    check_contract(ds, labels)
    assert [index_of(ds[j][0]) for j in range(len(ds))] == idx.tolist()
    assert ds[0][0].size == (32, 32)
    fine = build_dataset("cifar100", tmp_path, "test")
    coarse = build_dataset("cifar100", tmp_path, "test", label_type="coarse")
    assert fine.labels.tolist() == info100["test"][0].tolist() and fine.num_classes == 100
    assert coarse.labels.tolist() == info100["test"][1].tolist() and coarse.num_classes == 20
    assert coarse.class_names[coarse.labels[info100["fine_names"].index("oak_tree")]] == "trees"
    assert index_of(fine[5][0]) == 1005
    with pytest.raises(ConfigError, match="fine"):
        build_dataset("cifar100", tmp_path, "test", label_type="super")


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python"):
        build_dataset("cifar100", tmp_path, "train")
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")

