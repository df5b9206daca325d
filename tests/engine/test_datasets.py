"""Dataset preparation of a run: relabelled training classes."""
from __future__ import annotations

from engine_fixtures import Blobs
from gspdml.data import relabeled


def test_relabeled_dataset_maps_to_contiguous_ids():
    ds = relabeled(Blobs(3, 2, first_class=7))
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.num_classes == 3
    assert ds[3][1] == 1
