"""CUB-200-2011 (``gspdml.data.cub``) on a tiny fixture in the original layout."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_data import check_contract, index_of, make_cub
from gspdml.data import build_dataset
from gspdml.errors import DataError


def test_cub_splits_labels_and_files(tmp_path):
    info = make_cub(tmp_path, num_classes=4, per_class=3)
    train, test = build_dataset("cub", info["root"], "train"), build_dataset("cub", info["root"], "test")
    assert len(train) == 6 and len(test) == 6
    ids_by_class = {c: [i for i, l in info["labels"].items() if l == c] for c in range(1, 5)}
    check_contract(train, [1] * 3 + [2] * 3)
    check_contract(test, [3] * 3 + [4] * 3)
    assert test.class_names == ["003.Bird_3", "004.Bird_4"]
    for j in range(len(test)):
        image, label = test[j]
        assert index_of(image) in ids_by_class[3 + label]
    # root may also be the CUB_200_2011 folder itself
    assert build_dataset("cub", info["base"], "train").paths == train.paths


def test_cub_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset("cub", tmp_path / "nowhere", "train")
    assert "nowhere" in str(e.value) and "image_class_labels.txt" in str(e.value)
    (tmp_path / "CUB_200_2011").mkdir()
    with pytest.raises(DataError, match=r"missing .*images\.txt"):
        build_dataset("cub", tmp_path, "train")


def test_cub_inconsistent_label_files(tmp_path):
    info = make_cub(tmp_path)
    labels = Path(info["base"]) / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="different image ids"):
        build_dataset("cub", info["root"], "train")
    labels.write_text("\n".join(lines[:-1] + [lines[-1].split()[0] + " 99"]) + "\n")
    with pytest.raises(DataError, match="not a class id of classes.txt"):
        build_dataset("cub", info["root"], "train")

