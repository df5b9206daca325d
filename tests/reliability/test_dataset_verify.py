"""CSV and folder datasets are verified before training: every image exists and decodes, with a
cached result (issue 11: a missing image in a CSV dataset aborted training after step 5)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import gspdml.data.images as images_module
from fixtures_data import index_of, make_csv, make_folder, write_corrupt, write_image
from gspdml.cli import main
from gspdml.data import build_dataset
from gspdml.data.images import VERIFY_CACHE_NAME
from gspdml.errors import DataError


def _count_decodes(monkeypatch) -> list[str]:
    """Record every image the verification decodes."""
    seen: list[str] = []
    real = images_module.unreadable_reason

    def counting(path):
        seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(images_module, "unreadable_reason", counting)
    return seen


def test_missing_csv_image_is_an_error_naming_its_row(tmp_path):
    info = make_csv(tmp_path)
    gone = tmp_path / info["rows"][2][0]  # the first 'dog' row: line 4 of the CSV
    os.remove(gone)
    with pytest.raises(DataError) as err:
        build_dataset("csv", info["csv"], "train")
    msg = str(err.value)
    assert "1 of 4 image files" in msg and f"row 4 {str(gone)!r}" in msg and "Traceback" not in msg
    build_dataset("csv", info["csv"], "test")  # the other split is complete


def test_undecodable_csv_images_are_listed_with_their_count(tmp_path):
    info = make_csv(tmp_path)
    bad = [str(tmp_path / info["rows"][i][0]) for i in (0, 3)]
    for p in bad:
        write_corrupt(p)
    with pytest.raises(DataError) as err:
        build_dataset("csv", info["csv"], "train")
    msg = str(err.value)
    assert msg.startswith("2 of 4 images of dataset 'csv' (split 'train') cannot be read: ")
    assert all(repr(p) in msg for p in bad) and "skip_corrupt=true" in msg and "verify=false" in msg
    lazy = build_dataset("csv", info["csv"], "train", verify=False)  # the opt-out: read only when loaded
    assert len(lazy) == 4
    with pytest.raises(DataError, match="cannot read image"):
        lazy[0]


def test_truncated_jpeg_in_a_folder_dataset_is_found(tmp_path):
    info = make_folder(tmp_path)
    victim = Path(info["truth"]["train"][3][0])
    write_image(victim, 3, size=64)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"1 of 6 images of dataset 'folder' \(split 'train'\) cannot be read") as err:
        build_dataset("folder", info["root"], "train")
    assert repr(str(victim)) in str(err.value) and "truncated" in str(err.value)
    assert len(build_dataset("folder", info["root"], "test")) == 6


def test_second_verification_does_not_decode_again(tmp_path, monkeypatch):
    info = make_csv(tmp_path)
    seen = _count_decodes(monkeypatch)
    first = build_dataset("csv", info["csv"], "test")
    assert sorted(seen) == sorted(first.paths) and len(seen) == 6  # every test image decoded once
    cache = json.loads((tmp_path / VERIFY_CACHE_NAME).read_text())
    assert sorted(cache["files"]) == sorted(first.paths)
    seen.clear()
    again = build_dataset("csv", info["csv"], "test")
    assert seen == [] and again.paths == first.paths  # nothing decoded: all cached and unchanged
    changed = first.paths[1]
    write_image(changed, 1, size=20)  # new size: verified again, alone
    build_dataset("csv", info["csv"], "test")
    assert seen == [changed]
    seen.clear()
    write_corrupt(changed)  # a cached-good file that broke is found
    with pytest.raises(DataError, match="1 of 6 images"):
        build_dataset("csv", info["csv"], "test")
    assert seen == [changed]


def test_paths_outside_the_csv_folder_need_an_option(tmp_path):
    data = tmp_path / "data"
    info = make_csv(data)
    outside = tmp_path / "elsewhere" / "x.png"
    write_image(outside, 7)
    lines = Path(info["csv"]).read_text().splitlines()
    Path(info["csv"]).write_text("\n".join(lines[:3] + [f"{outside},cat,train,0,0", "../elsewhere/x.png,dog,train,0,0"]
                                           + lines[3:]) + "\n")
    with pytest.raises(DataError) as err:
        build_dataset("csv", info["csv"], "train")
    msg = str(err.value)
    assert f"dataset.csv:4: path {str(outside)!r} is outside the CSV's folder" in msg
    assert "(and 1 more rows)" in msg and "allow_outside_root=true" in msg
    ds = build_dataset("csv", info["csv"], "train", allow_outside_root=True)
    assert ds.paths.count(str(outside)) == 2 and len(ds) == 6
    assert index_of(ds[ds.paths.index(str(outside))][0]) == 7


def test_train_refuses_a_csv_dataset_with_a_missing_image_before_training(tmp_path, capsys):
    info = make_csv(tmp_path / "data")
    os.remove(tmp_path / "data" / info["rows"][1][0])
    cfg = {"name": "csv_run", "data": {"dataset": "csv", "root": info["csv"], "transform": "small",
                                       "normalization": "none", "image_size": 12, "classes_per_batch": 2,
                                       "samples_per_class": 2, "num_workers": 0},
           "model": {"backbone": "smallcnn", "backbone_kwargs": {"widths": [4, 4, 8]}, "local_dim": 8,
                     "pooling": "gap", "freeze_bn": False},
           "loss": {"name": "C1"}, "train": {"max_steps": 6, "device": "cpu", "plot": False, "log_every": 1}}
    path = tmp_path / "csv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", "-c", str(path), "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "1 of 4 image files" in err and "row 3" in err
