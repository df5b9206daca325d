"""In-shop (``gspdml.data.inshop``) on a tiny fixture in the original layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures_data import check_contract, make_inshop
from gspdml.data import build_dataset
from gspdml.errors import DataError


def test_inshop_query_gallery_share_labels(tmp_path):
    info = make_inshop(tmp_path, train_items=3, test_items=4)
    rows = info["rows"]
    train = build_dataset("inshop", info["root"], "train")
    check_contract(train, [it for _, it, s in rows if s == "train"])
    query = build_dataset("inshop", info["root"], "query")
    gallery = build_dataset("inshop", info["root"], "gallery")
    test = build_dataset("inshop", info["root"], "test")
    assert (len(query), len(gallery), len(test)) == (4, 8, 12)
    item_of = {os.path.join(info["root"], r): it for r, it, _ in rows}
    for ds in (query, gallery, test):
        assert ds.classes == sorted({it for _, it, s in rows if s != "train"})
        for p, label in zip(ds.paths, ds.labels):
            assert ds.classes[label] == item_of[p]
    # every query's item has gallery images with the same label
    assert set(query.labels.tolist()) <= set(gallery.labels.tolist())
    assert test.query_mask.tolist() == [s == "query" for _, _, s in rows if s != "train"]
    assert (test.query_mask ^ test.gallery_mask).all()


def test_inshop_header_errors(tmp_path):
    info = make_inshop(tmp_path)
    f = Path(info["root"]) / "Eval" / "list_eval_partition.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(["99"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="header says 99 images"):
        build_dataset("inshop", info["root"], "train")
    f.write_text("\n".join(lines[:3] + [lines[3].replace("train", "val")] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt:4"):
        build_dataset("inshop", info["root"], "train")
    with pytest.raises(DataError, match="list_eval_partition"):
        build_dataset("inshop", tmp_path / "other", "train")

