"""Benchmark and custom dataset loaders on tiny fixtures in the original on-disk layouts."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import (index_of, make_cars, make_cifar10, make_cifar100, make_csv, make_cub, make_folder,
                           make_inshop, make_sop, write_corrupt, write_image)
from gspdml.data import DATASETS, build_dataset
from gspdml.data.images import SkippedImagesWarning
from gspdml.errors import ConfigError, DataError


def _check_contract(ds, expected_raw):
    """labels == rank of the raw id among the sorted distinct ids (independent remap)."""
    order = sorted(set(expected_raw))
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [order.index(r) for r in expected_raw]
    assert ds.num_classes == len(order)
    assert set(ds.labels.tolist()) == set(range(ds.num_classes))


# ---------------------------------------------------------------- CUB
def test_cub_splits_labels_and_files(tmp_path):
    info = make_cub(tmp_path, num_classes=4, per_class=3)
    train, test = build_dataset("cub", info["root"], "train"), build_dataset("cub", info["root"], "test")
    assert len(train) == 6 and len(test) == 6
    ids_by_class = {c: [i for i, l in info["labels"].items() if l == c] for c in range(1, 5)}
    _check_contract(train, [1] * 3 + [2] * 3)
    _check_contract(test, [3] * 3 + [4] * 3)
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
    _check_contract(ds, [1, 1, 2, 2, 2])
    for j in range(len(ds)):
        ds[j]


def test_skip_corrupt_reports_removed_class(tmp_path):
    info = make_cub(tmp_path, num_classes=4, per_class=2)
    for i in (1, 2):  # both images of class 1
        write_corrupt(info["paths"][i])
    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 of 4 .*removed: \[1\]"):
        ds = build_dataset("cub", info["root"], "train", skip_corrupt=True, progress=False)
    assert ds.num_classes == 1 and ds.labels.tolist() == [0, 0] and ds.class_names == ["002.Bird_2"]


# ---------------------------------------------------------------- Cars196
def test_cars_struct_layout_and_class_halves(tmp_path):
    info = make_cars(tmp_path, num_classes=4, per_class=3)
    for split, wanted in (("train", {1, 2}), ("test", {3, 4})):
        ds = build_dataset("cars196", info["root"], split)
        expect = [(p, c) for p, c in zip(info["paths"], info["classes"]) if c in wanted]
        assert ds.paths == [p for p, _ in expect]
        _check_contract(ds, [c for _, c in expect])
        assert ds.class_names == [f"Maker Model {c} 2012" for c in sorted(wanted)]
        for j in range(len(ds)):
            image, label = ds[j]
            assert index_of(image) == info["paths"].index(ds.paths[j])


def test_cars_bad_annotation_file(tmp_path):
    import scipy.io

    info = make_cars(tmp_path)
    scipy.io.savemat(Path(info["root"]) / "cars_annos.mat", {"annotations": np.zeros((1, 2), dtype=[("fname", "O"), ("class", "O")])})
    with pytest.raises(DataError, match=r"lacks the fields \['relative_im_path'\]"):
        build_dataset("cars196", info["root"], "train")
    (Path(info["root"]) / "cars_annos.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cars_annos.mat"):
        build_dataset("cars196", info["root"], "train")
    os.remove(Path(info["root"]) / "cars_annos.mat")
    with pytest.raises(DataError, match="cars_annos.mat"):
        build_dataset("cars196", info["root"], "train")


# ---------------------------------------------------------------- SOP
def test_sop_splits(tmp_path):
    info = make_sop(tmp_path, train_classes=3, test_classes=4, per_class=2)
    for split in ("train", "test"):
        ds = build_dataset("sop", info["root"], split)
        truth = info[split]
        assert ds.paths == [p for p, _, _ in truth]
        _check_contract(ds, [c for _, c, _ in truth])
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


# ---------------------------------------------------------------- In-shop
def test_inshop_query_gallery_share_labels(tmp_path):
    info = make_inshop(tmp_path, train_items=3, test_items=4)
    rows = info["rows"]
    train = build_dataset("inshop", info["root"], "train")
    _check_contract(train, [it for _, it, s in rows if s == "train"])
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


# ---------------------------------------------------------------- CIFAR
def test_cifar10_and_100(tmp_path):
    info10 = make_cifar10(tmp_path, per_batch=4)
    info100 = make_cifar100(tmp_path, train_per_fine=2, test_per_fine=1)
    ds = build_dataset("cifar10", tmp_path, "train")
    idx = np.concatenate([info10["truth"][f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((info10["truth"][f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert len(ds) == 20
    _check_contract(ds, labels)
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


# ---------------------------------------------------------------- CSV and folder
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


# ---------------------------------------------------------------- registry
def test_registry_names_and_errors(tmp_path):
    assert set(DATASETS) == {"cub", "cars196", "sop", "inshop", "cifar10", "cifar100", "cifar_collage",
                             "digits_collage", "tokens", "csv", "folder"}
    with pytest.raises(ConfigError, match="cars196, cifar10, cifar100, cifar_collage, csv, cub"):
        build_dataset("imagenet", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"valid choices are: test, train"):
        build_dataset("cub", tmp_path, "validation")
    with pytest.raises(ConfigError, match=r"option\(s\) \['colour'\].*verify"):
        build_dataset("cub", tmp_path, "train", colour=True)


def test_transform_is_applied(tmp_path):
    info = make_cub(tmp_path)
    calls = []
    ds = build_dataset("cub", info["root"], "train", transform=lambda im: calls.append(im.size) or "x")
    assert ds[0] == ("x", 0) and calls == [(12, 12)]
    write_image(info["paths"][2], 0, size=20)
    assert ds[1][1] == 0 and calls[-1] == (20, 20)


def test_registry_import_failure_is_a_config_error(tmp_path, monkeypatch):
    from gspdml.data import registry

    monkeypatch.setitem(registry.DATASETS, "broken", "gspdml.data.no_such_module")
    with pytest.raises(ConfigError, match="no_such_module"):
        build_dataset("broken", tmp_path, "train")
    monkeypatch.setitem(registry.DATASETS, "nobuilder", "gspdml.data.splits:no_such_builder")
    with pytest.raises(ConfigError, match="no_such_builder"):
        build_dataset("nobuilder", tmp_path, "train")


@pytest.mark.parametrize("name", ["tokens", "digits_collage"])
def test_demo_datasets_are_reachable(name, tmp_path):
    import importlib.util

    if importlib.util.find_spec(DATASETS[name]) is None:
        pytest.skip(f"{DATASETS[name]} is not written yet")
    ds = build_dataset(name, str(tmp_path), "train")
    assert len(ds) == len(ds.labels) > 0
    assert set(np.asarray(ds.labels).tolist()) == set(range(ds.num_classes))


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
