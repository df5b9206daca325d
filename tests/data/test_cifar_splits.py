"""The class-disjoint CIFAR-100 sub-class splits of the Cifar Collage (``split_scheme`` 3/2 and 2/1/2),
checked against the fixture's hand-written CIFAR-100 hierarchy."""
from __future__ import annotations

import itertools

import pytest

from fixtures_data import CIFAR100_HIERARCHY, make_cifar100
from gspdml.data import build_dataset
from gspdml.data.cifar import load_cifar100
from gspdml.data.cifar_collage import subclass_split
from gspdml.errors import ConfigError

BACKGROUND = {"large_man-made_outdoor_things", "large_natural_outdoor_scenes", "trees", "flowers"}
#: split -> positions (in the alphabetical = fine-label order of a super-class's 5 names)
SCHEMES = {"3/2": {"train": [0, 1, 2], "test": [3, 4]},
           "2/1/2": {"train": [0, 1], "val": [2], "test": [3, 4]}}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("cifar"), train_per_fine=1, test_per_fine=1)


def _expected(scheme):
    """The split's (target fine names, background fine names), written out from the hierarchy."""
    out = {}
    for split, positions in SCHEMES[scheme].items():
        targets = [sorted(fs)[p] for s, fs in CIFAR100_HIERARCHY.items() if s not in BACKGROUND for p in positions]
        backs = [sorted(fs)[p] for s, fs in CIFAR100_HIERARCHY.items() if s in BACKGROUND for p in positions]
        out[split] = (sorted(targets), sorted(backs))
    return out


@pytest.mark.parametrize("scheme,counts", [("3/2", {"train": 60, "test": 40}),
                                           ("2/1/2", {"train": 40, "val": 20, "test": 40})])
def test_subclass_split_disjoint_and_counted(cifar, scheme, counts):
    split = subclass_split(load_cifar100(cifar["root"], "train"), scheme)
    assert set(split) == set(counts)
    expected = _expected(scheme)
    for name, n in counts.items():
        targets, backs = split[name]["targets"], split[name]["backgrounds"]
        assert len(targets) + len(backs) == n and len(targets) == n * 16 // 20 and len(backs) == n * 4 // 20
        assert (targets, backs) == expected[name]
    for a, b in itertools.combinations(split, 2):
        assert not set(split[a]["targets"] + split[a]["backgrounds"]) & set(split[b]["targets"] + split[b]["backgrounds"])
    union = set().union(*(split[s]["targets"] + split[s]["backgrounds"] for s in split))
    assert union == {f for fs in CIFAR100_HIERARCHY.values() for f in fs}


@pytest.mark.parametrize("scheme", ["3/2", "2/1/2"])
def test_collage_splits_use_only_their_subclasses(cifar, scheme):
    names = cifar["fine_names"]
    expected = _expected(scheme)
    seen = {}
    for split in SCHEMES[scheme]:
        ds = build_dataset("cifar_collage", cifar["root"], split, split_scheme=scheme, num_samples=40)
        assert ds.split_scheme == scheme and ds.grid == 2
        fine = {names[f] for f in ds.fine_labels.tolist()}
        assert fine <= set(expected[split][0])
        backs = {names[f] for f in cifar["train" if split == "train" else "test"][0][ds.background_indices.ravel()]}
        assert backs <= set(expected[split][1])
        seen[split] = fine | backs
        assert ds.num_classes <= 16 and not set(ds.class_names) & BACKGROUND
    for a, b in itertools.combinations(seen, 2):
        assert not seen[a] & seen[b]


def test_split_scheme_overrides_variant_and_errors(cifar):
    paper32 = build_dataset("cifar_collage", cifar["root"], "test", variant="paper", split_scheme="3/2")
    assert paper32.grid == 4 and paper32.split_scheme == "3/2" and len(paper32) == 32 * 1
    assert build_dataset("cifar_collage", cifar["root"], "val", variant="paper").split_scheme == "2/1/2"
    with pytest.raises(ConfigError, match="valid choices are: 2/1/2, 3/2"):
        build_dataset("cifar_collage", cifar["root"], "train", split_scheme="4/1")
    with pytest.raises(ConfigError, match="valid choices are: test, train"):
        build_dataset("cifar_collage", cifar["root"], "val", variant="paper", split_scheme="3/2")
