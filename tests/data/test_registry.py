"""The dataset registry (``gspdml.data.registry``): names, errors, registration."""
from __future__ import annotations

import numpy as np
import pytest

from gspdml.data import DATASETS, build_dataset
from gspdml.errors import ConfigError


def test_registry_names_and_errors(tmp_path):
    assert set(DATASETS) == {"cub", "cars196", "sop", "inshop", "cifar10", "cifar100", "cifar_collage",
                             "digits_collage", "tokens", "csv", "folder"}
    with pytest.raises(ConfigError, match="cars196, cifar10, cifar100, cifar_collage, csv, cub"):
        build_dataset("imagenet", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"valid choices are: test, train"):
        build_dataset("cub", tmp_path, "validation")
    with pytest.raises(ConfigError, match=r"dataset 'cub' does not accept option\(s\) colour; accepted options: verify"):
        build_dataset("cub", tmp_path, "train", colour=True)


@pytest.mark.parametrize("name", ["tokens", "digits_collage"])
def test_demo_datasets_are_reachable(name, tmp_path):
    ds = build_dataset(name, str(tmp_path), "train")
    assert len(ds) == len(ds.labels) > 0
    assert set(np.asarray(ds.labels).tolist()) == set(range(ds.num_classes))



def test_register_a_dataset_builder(tmp_path):
    @DATASETS.register("test-lines")
    def lines(root, split, transform=None, *, repeat: int = 1):
        return [(split, i) for i in range(repeat)]

    try:
        assert DATASETS["TEST-LINES"] is lines and "test-lines" in DATASETS.names()
        assert build_dataset("Test-Lines", tmp_path, "train", repeat=2) == [("train", 0), ("train", 1)]
        with pytest.raises(ConfigError, match=r"'test-lines' does not accept option\(s\) colour; accepted options: repeat"):
            build_dataset("test-lines", tmp_path, "train", colour=True)
    finally:
        DATASETS.unregister("test-lines")
    assert "test-lines" not in DATASETS
