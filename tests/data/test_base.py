"""``ImageListDataset`` (``gspdml.data.base``): lazy loading, ``verify``, ``skip_corrupt``, transforms."""
from __future__ import annotations

import os

import pytest

from fixtures_data import check_contract, make_cub, make_inshop, write_corrupt, write_image
from gspdml.data import build_dataset
from gspdml.data.images import SkippedImagesWarning
from gspdml.errors import DataError


def test_missing_image_lazy_and_verify(tmp_path):
    info = make_cub(tmp_path)
    gone = info["paths"][2]
    os.remove(gone)
    ds = build_dataset("cub", info["root"], "train")  # lazy: no per-file stat at construction
    with pytest.raises(DataError) as e:
        ds[ds.paths.index(gone)]
    assert gone in str(e.value)
    with pytest.raises(DataError) as e:
        build_dataset("cub", info["root"], "train", verify=True)
    assert gone in str(e.value) and "1 of 6" in str(e.value)


def test_corrupt_image_error_and_skip(tmp_path):
    info = make_cub(tmp_path, num_classes=4, per_class=3)
    bad = info["paths"][1]
    write_corrupt(bad)
    ds = build_dataset("cub", info["root"], "train")
    with pytest.raises(DataError) as e:
        ds[ds.paths.index(bad)]
    assert bad in str(e.value) and "skip_corrupt" in str(e.value)
    with pytest.warns(SkippedImagesWarning, match=r"skipped 1 of 6 images") as rec:
        ds = build_dataset("cub", info["root"], "train", skip_corrupt=True, progress=False)
    assert bad in str(rec[0].message)
    assert len(ds) == 5 and bad not in ds.paths
    check_contract(ds, [1, 1, 2, 2, 2])
    for j in range(len(ds)):
        ds[j]


def test_skip_corrupt_reports_removed_class(tmp_path):
    info = make_cub(tmp_path, num_classes=4, per_class=2)
    for i in (1, 2):  # both images of class 1
        write_corrupt(info["paths"][i])
    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 of 4 .*removed: \[1\]"):
        ds = build_dataset("cub", info["root"], "train", skip_corrupt=True, progress=False)
    assert ds.num_classes == 1 and ds.labels.tolist() == [0, 0] and ds.class_names == ["002.Bird_2"]


def test_skip_corrupt_keeps_shared_query_gallery_mapping(tmp_path):
    info = make_inshop(tmp_path, train_items=1, test_items=3)
    rows = info["rows"]
    q = [i for i, (_, _, s) in enumerate(rows) if s == "query"][0]  # the first test item's only query
    write_corrupt(os.path.join(info["root"], rows[q][0]))
    with pytest.warns(SkippedImagesWarning, match=r"without images in this split: \['id_00000008'\]"):
        query = build_dataset("inshop", info["root"], "query", skip_corrupt=True, progress=False)
    gallery = build_dataset("inshop", info["root"], "gallery")
    assert query.classes == gallery.classes and query.num_classes == 3
    assert query.labels.tolist() == [1, 2]


def test_transform_is_applied(tmp_path):
    info = make_cub(tmp_path)
    calls = []
    ds = build_dataset("cub", info["root"], "train", transform=lambda im: calls.append(im.size) or "x")
    assert ds[0] == ("x", 0) and calls == [(12, 12)]
    write_image(info["paths"][2], 0, size=20)
    assert ds[1][1] == 0 and calls[-1] == (20, 20)

