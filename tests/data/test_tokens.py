"""Synthetic token corpus (paper Sec. 5.1): composition, splits, determinism, errors."""
import numpy as np
import pytest
import torch

from gspdml.data import build_dataset
from gspdml.errors import InputError


def test_counts_shapes_and_items():
    ds = build_dataset("tokens", None, "train", samples_per_class=10)
    assert len(ds) == 160 and ds.num_classes == 16 and ds.num_tokens == 68
    x, y = ds[17]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.int64 and x.shape == (50,)
    assert y == 1 and np.bincount(ds.labels).tolist() == [10] * 16


def test_bag_composition_against_naive_check():
    ds = build_dataset("tokens", None, "train", samples_per_class=40, seed=3)
    for tokens, label, bg in zip(ds.tokens, ds.labels, ds.background_mask):
        cls = ds.class_ids[label]
        for t, is_bg in zip(tokens.tolist(), bg.tolist()):
            if is_bg:
                assert 64 <= t < 68
            else:
                assert 4 * cls <= t < 4 * cls + 4
    share = ds.background_mask.mean(1)
    # background share ~ N(0.5, 0.1), rounded to 1/50
    assert abs(share.mean() - 0.5) < 0.02
    assert 0.07 < share.std() < 0.13
    assert set(np.unique(ds.tokens)) == set(range(68))


def test_background_share_clipped():
    ds = build_dataset("tokens", None, "train", samples_per_class=20, background_mean=1.5, background_std=0.1)
    assert ds.background_mask.all()


def test_disjoint_and_same_splits():
    tr = build_dataset("tokens", None, "train", classes="disjoint", samples_per_class=5)
    te = build_dataset("tokens", None, "test", classes="disjoint", samples_per_class=5)
    assert tr.class_ids.tolist() == list(range(8)) and te.class_ids.tolist() == list(range(8, 16))
    assert tr.labels.max() == 7 and te.labels.max() == 7
    train_class_tokens = set(tr.tokens[~tr.background_mask].tolist())
    test_class_tokens = set(te.tokens[~te.background_mask].tolist())
    assert train_class_tokens.isdisjoint(test_class_tokens)
    same_tr = build_dataset("tokens", None, "train", samples_per_class=5)
    same_te = build_dataset("tokens", None, "test", samples_per_class=5)
    assert same_tr.num_classes == same_te.num_classes == 16
    assert not np.array_equal(same_tr.tokens, same_te.tokens)


def test_deterministic_by_seed():
    a = build_dataset("tokens", None, "train", samples_per_class=5, seed=7)
    b = build_dataset("tokens", None, "train", samples_per_class=5, seed=7)
    c = build_dataset("tokens", None, "train", samples_per_class=5, seed=8)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("kwargs", [{"classes": "mixed"}, {"bag_size": 0}, {"samples_per_class": -1},
                                    {"background_std": -0.1}])
def test_bad_options(kwargs):
    with pytest.raises(InputError):
        build_dataset("tokens", None, "train", **kwargs)


def test_bad_split():
    with pytest.raises(InputError, match="split"):
        build_dataset("tokens", None, "query")
