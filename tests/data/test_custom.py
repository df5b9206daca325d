"""Users' own data (``gspdml.data.custom``): CSV file lists and ImageFolder trees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures_data import index_of, make_csv, make_folder
from gspdml.data import build_dataset
from gspdml.errors import ConfigError, DataError


def test_csv_dataset(tmp_path):
    info = make_csv(tmp_path)
    train = build_dataset("csv", info["csv"], "train")
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.paths[0] == str(tmp_path / "images" / "train_cat_0.png")
    test = build_dataset("csv", tmp_path, "test")  # folder -> dataset.csv
    assert test.classes == ["2", "10"]  # numeric order, not string order
    assert test.labels.tolist() == [1, 1, 0, 0, 0, 0]
    assert test.query_mask.tolist() == [True, True, True, True, False, False]
    assert test.gallery_mask.tolist() == [True, True, False, False, True, True]
    query, gallery = build_dataset("csv", tmp_path, "query"), build_dataset("csv", tmp_path, "gallery")
    assert query.labels.tolist() == [1, 1, 0, 0] and gallery.labels.tolist() == [1, 1, 0, 0]
    assert query.classes == gallery.classes == ["2", "10"]
    assert [index_of(query[j][0]) for j in range(4)] == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match="gallery, query, test, train"):
        build_dataset("csv", tmp_path, "val")


def test_csv_without_flags_and_errors(tmp_path):
    info = make_csv(tmp_path, with_flags=False)
    assert len(build_dataset("csv", tmp_path, "query")) == len(build_dataset("csv", tmp_path, "test")) == 6
    Path(info["csv"]).write_text("file,label,split\na.png,1,train\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['path'\]"):
        build_dataset("csv", tmp_path, "train")
    Path(info["csv"]).write_text("path,label,split,is_query\na.png,1,test,maybe\n")
    with pytest.raises(DataError, match=r"dataset.csv:2: column 'is_query'"):
        build_dataset("csv", tmp_path, "query")
    with pytest.raises(DataError, match="not found"):
        build_dataset("csv", tmp_path / "none.csv", "train")


def test_folder_dataset(tmp_path):
    info = make_folder(tmp_path, splits=("train", "query", "gallery"))
    ds = build_dataset("folder", info["root"], "train")
    assert ds.class_names == ["apple", "pear", "plum"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [index_of(ds[j][0]) for j in range(6)] == [i for _, _, i in info["truth"]["train"]]
    os.rename(os.path.join(info["root"], "gallery", "apple"), os.path.join(tmp_path, "moved"))
    query, gallery = build_dataset("folder", info["root"], "query"), build_dataset("folder", info["root"], "gallery")
    assert query.classes == gallery.classes == ["apple", "pear", "plum"]
    assert gallery.labels.tolist() == [1, 1, 2, 2]
    with pytest.raises(ConfigError, match="gallery, query, train"):
        build_dataset("folder", info["root"], "test")
    os.makedirs(os.path.join(info["root"], "train", "empty_class"))
    with pytest.raises(DataError, match="empty_class"):
        build_dataset("folder", info["root"], "train")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", tmp_path / "missing", "train")

