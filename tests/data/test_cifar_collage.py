"""Cifar Collage composition, sub-class splits and determinism (against the fixture's known hierarchy)."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_data import CIFAR100_HIERARCHY, color_of, make_cifar100
from gspdml.data import build_dataset
from gspdml.errors import ConfigError

BACKGROUND = {"large_man-made_outdoor_things", "large_natural_outdoor_scenes", "trees", "flowers"}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("cifar"), train_per_fine=2, test_per_fine=2)


def _source_info(cifar, source):
    """For each image of the source file: (super-class name, position of its fine class in the super-class)."""
    fine, _ = cifar[source]
    out = []
    for f in fine:
        name = cifar["fine_names"][f]
        sup = next(s for s, fs in CIFAR100_HIERARCHY.items() if name in fs)
        out.append((sup, sorted(CIFAR100_HIERARCHY[sup]).index(name)))
    return out


def _cells(image, grid):
    arr = np.asarray(image)
    return [tuple(int(v) for v in arr[r * 32 + 5, c * 32 + 5]) for r in range(grid) for c in range(grid)]


@pytest.mark.parametrize("split,subpos,offset", [("train", {0, 1, 2}, 0), ("test", {3, 4}, 1000)])
def test_released_collage_composition(cifar, split, subpos, offset):
    ds = build_dataset("cifar_collage", cifar["root"], split, seed=0)
    info = _source_info(cifar, "train" if split == "train" else "test")
    n_fine_used = 16 * len(subpos)
    assert len(ds) == n_fine_used * 2  # every target image of the pool once
    assert ds.num_classes == 16 and not set(ds.class_names) & BACKGROUND
    assert sorted(ds.target_indices.tolist()) == sorted(
        i for i, (sup, pos) in enumerate(info) if sup not in BACKGROUND and pos in subpos)
    for j in range(0, len(ds), 7):
        image, label = ds[j]
        assert image.size == (64, 64)
        colors = _cells(image, 2)
        sources = ds.cell_sources(j)
        assert colors == [color_of(offset + int(s)) for s in sources]
        t = int(ds.target_cells[j])
        sup, pos = info[sources[t]]
        assert ds.class_names[label] == sup and pos in subpos
        for k, s in enumerate(sources):
            if k != t:
                bsup, bpos = info[s]
                assert bsup in BACKGROUND and bpos in subpos


def test_collage_determinism_and_cells(cifar):
    a = build_dataset("cifar_collage", cifar["root"], "train", seed=3)
    b = build_dataset("cifar_collage", cifar["root"], "train", seed=3)
    c = build_dataset("cifar_collage", cifar["root"], "train", seed=4)
    assert np.array_equal(a.compose(5), b.compose(5)) and a.labels.tolist() == b.labels.tolist()
    assert not np.array_equal(a.target_cells, c.target_cells)
    assert set(a.target_cells.tolist()) == {0, 1, 2, 3}
    big = build_dataset("cifar_collage", cifar["root"], "train", num_samples=250)
    assert len(big) == 250 and np.array_equal(big.target_indices[:96], big.target_indices[96:192])


def test_paper_variant_4x4(cifar):
    ds = build_dataset("cifar_collage", cifar["root"], "val", variant="paper")
    info = _source_info(cifar, "test")
    assert ds.grid == 4 and ds[0][0].size == (128, 128) and len(ds) == 16 * 2
    assert all(info[i][1] == 2 for i in ds.cell_sources(0))
    assert len(build_dataset("cifar_collage", cifar["root"], "train", variant="paper")) == 16 * 2 * 2
    assert build_dataset("cifar_collage", cifar["root"], "train", grid=3)[0][0].size == (96, 96)
    with pytest.raises(ConfigError, match="valid choices are: test, train"):
        build_dataset("cifar_collage", cifar["root"], "val")
    with pytest.raises(ConfigError, match="paper, released"):
        build_dataset("cifar_collage", cifar["root"], "train", variant="x")
