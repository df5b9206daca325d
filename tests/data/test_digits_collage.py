"""Digits Collage: counts, unseen classes, image split (pixel identity), masks, determinism."""
from itertools import combinations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from gspdml.data import build_dataset
from gspdml.data import digits_collage as dc
from gspdml.errors import InputError


@pytest.fixture(scope="module")
def digit_lookup():
    """Raw 8x8 digit image bytes (as the collage stores them: /16, float32) -> digit label."""
    d = load_digits()
    imgs = (d.images / 16.0).astype(np.float32)
    return {img.tobytes(): int(t) for img, t in zip(imgs, d.target)}


def tiles(ds):
    """Cut each collage back into its grid of 8x8 digit images (undo the x2 pixel repetition)."""
    g, u = ds.grid, ds.upsample
    small = ds.images[:, ::u, ::u]
    return small.reshape(len(ds), g, 8, g, 8).transpose(0, 1, 3, 2, 4)


def test_counts_and_classes():
    tr = build_dataset("digits_collage", None, "train")
    te = build_dataset("digits_collage", None, "test")
    assert len(tr) == 8 * 120 and len(te) == 7 * 60
    assert tr.num_classes == 8 and te.num_classes == 7
    assert set(tr.pairs) | set(te.pairs) == set(combinations(range(4, 10), 2))
    assert set(tr.pairs).isdisjoint(te.pairs)
    x, y = tr[0]
    assert x.shape == (1, 48, 48) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # every target digit occurs in at least two training pairs
    counts = np.bincount(np.array(tr.pairs).ravel(), minlength=10)[4:]
    assert counts.min() >= 2


def test_no_test_digit_image_in_train_by_pixels():
    tr = build_dataset("digits_collage", None, "train", samples_per_class=60)
    te = build_dataset("digits_collage", None, "test", samples_per_class=60)
    train_tiles = {t.tobytes() for t in tiles(tr).reshape(-1, 8, 8)}
    test_tiles = {t.tobytes() for t in tiles(te).reshape(-1, 8, 8)}
    assert len(train_tiles) > 500 and len(test_tiles) > 500
    assert train_tiles.isdisjoint(test_tiles)


@pytest.mark.parametrize("grid", [2, 3, 4])
def test_masks_and_cells_match_pixels(grid, digit_lookup):
    ds = build_dataset("digits_collage", None, "test", grid=grid, samples_per_class=6, seed=1)
    assert ds.images.shape[1:] == (16 * grid, 16 * grid)
    assert ds.target_masks.shape == (len(ds), grid, grid)
    assert (ds.target_masks.sum((1, 2)) == 2).all()
    t = tiles(ds)
    for i in range(len(ds)):
        pair = ds.pairs[ds.labels[i]]
        found_targets = []
        for r in range(grid):
            for c in range(grid):
                digit = digit_lookup[t[i, r, c].tobytes()]  # pixel-identical to a sklearn digit
                assert digit == ds.cell_digits[i, r, c]
                if ds.target_masks[i, r, c]:
                    found_targets.append(digit)
                else:
                    assert digit in (0, 1, 2, 3)
        assert sorted(found_targets) == list(pair)
    pm = ds.pixel_masks(4 * grid)
    assert pm.shape == (len(ds), 4 * grid, 4 * grid)
    assert np.array_equal(pm[:, ::4, ::4], ds.target_masks)


def test_deterministic_by_seed():
    a = build_dataset("digits_collage", None, "train", samples_per_class=4, seed=5)
    b = build_dataset("digits_collage", None, "train", samples_per_class=4, seed=5)
    c = build_dataset("digits_collage", None, "train", samples_per_class=4, seed=6)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)


def test_image_split_halves():
    split = dc.split_digit_images(0)
    for d in range(10):
        assert np.intersect1d(split["train"][d], split["test"][d]).size == 0
        assert abs(len(split["train"][d]) - len(split["test"][d])) <= 1


@pytest.mark.parametrize("kwargs", [{"grid": 5}, {"upsample": 0}, {"samples_per_class": 0},
                                    {"pairs": [(4, 4)]}, {"pairs": [(1, 5)]}, {"pairs": []}])
def test_bad_options(kwargs):
    with pytest.raises(InputError):
        build_dataset("digits_collage", None, "train", **kwargs)


def test_custom_pairs_and_bad_mask_size():
    ds = build_dataset("digits_collage", None, "train", pairs=[(9, 4)], samples_per_class=3)
    assert ds.pairs == ((4, 9),) and ds.num_classes == 1
    with pytest.raises(InputError, match="multiple"):
        ds.pixel_masks(10)
