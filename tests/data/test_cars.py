"""Cars196 (``gspdml.data.cars``) on a tiny fixture in the original layout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import check_contract, index_of, make_cars
from gspdml.data import build_dataset
from gspdml.errors import DataError


def test_cars_struct_layout_and_class_halves(tmp_path):
    info = make_cars(tmp_path, num_classes=4, per_class=3)
    for split, wanted in (("train", {1, 2}), ("test", {3, 4})):
        ds = build_dataset("cars196", info["root"], split)
        expect = [(p, c) for p, c in zip(info["paths"], info["classes"]) if c in wanted]
        assert ds.paths == [p for p, _ in expect]
        check_contract(ds, [c for _, c in expect])
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

