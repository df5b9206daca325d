"""Stanford Online Products (``gspdml.data.sop``) on a tiny fixture in the original layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures_data import check_contract, index_of, make_sop
from gspdml.data import build_dataset
from gspdml.errors import DataError


def test_sop_splits(tmp_path):
    info = make_sop(tmp_path, train_classes=3, test_classes=4, per_class=2)
    for split in ("train", "test"):
        ds = build_dataset("sop", info["root"], split)
        truth = info[split]
        assert ds.paths == [p for p, _, _ in truth]
        check_contract(ds, [c for _, c, _ in truth])
        assert ds.super_labels.tolist() == [s for _, _, s in truth]
    ds = build_dataset("sop", info["root"], "test")
    assert len(ds) == 8 and ds.class_names == ["4", "5", "6", "7"]
    assert index_of(ds[3][0]) == 6 + 3


def test_sop_malformed_files(tmp_path):
    info = make_sop(tmp_path)
    f = Path(info["base"]) / "Ebay_train.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="header"):
        build_dataset("sop", info["root"], "train")
    f.write_text("\n".join(lines[:2] + ["7 x 1 a.JPG"] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"Ebay_train.txt:3"):
        build_dataset("sop", info["root"], "train")
    with pytest.raises(DataError, match="Ebay_test.txt"):
        os.remove(Path(info["base"]) / "Ebay_test.txt")
        build_dataset("sop", info["root"], "test")

