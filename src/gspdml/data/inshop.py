"""In-shop Clothes Retrieval (DeepFashion) in its original layout.

Expected tree (``root`` may be the folder holding ``img/`` and ``Eval/`` or a parent
``In_shop_Clothes_Retrieval_Benchmark``/``inshop`` folder)::

    img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...
    Eval/list_eval_partition.txt

``list_eval_partition.txt`` starts with two header lines, the number of images ``N`` and
``image_name item_id evaluation_status``, followed by ``N`` lines
``img/.../x.jpg id_00000002 train|query|gallery``.

Splits: ``train`` (3,997 items, 25,882 images), ``query`` (14,218 images) and ``gallery``
(12,612 images) of the 3,985 test items, and ``test`` = query + gallery together with boolean
``query_mask``/``gallery_mask``. Item ids are the classes; query, gallery and test share one label
mapping (the sorted test item ids), so a query label equals its gallery label.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from gspdml.data.base import ImageListDataset, check_split, read_lines, resolve_root
from gspdml.data.registry import DATASETS
from gspdml.errors import DataError

SPLITS = ("train", "test", "query", "gallery")
STATUSES = ("train", "query", "gallery")
HEADER = ["image_name", "item_id", "evaluation_status"]
LAYOUT = """<root>/
    img/<gender>/<category>/<item id>/<image>.jpg
    Eval/list_eval_partition.txt  (line 1: N; line 2: image_name item_id evaluation_status;
                                   then N lines: <img/... path> <item id> train|query|gallery)"""
PARTITION = os.path.join("Eval", "list_eval_partition.txt")


def read_partition(path: str) -> tuple[list[str], list[str], list[str]]:
    """Parse list_eval_partition.txt: (image paths, item ids, statuses)."""
    lines = read_lines(path, "inshop")
    if len(lines) < 2 or not lines[0].strip().isdigit() or lines[1].split() != HEADER:
        raise DataError(
            f"{path}: expected two header lines, the image count N and {' '.join(HEADER)!r}; "
            f"got {lines[:2]!r}"
        )
    count = int(lines[0])
    if count != len(lines) - 2:
        raise DataError(f"{path}: header says {count} images but {len(lines) - 2} image lines follow")
    paths, items, statuses = [], [], []
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if len(parts) != 3 or parts[2] not in STATUSES:
            raise DataError(f"{path}:{lineno}: expected '<image path> <item id> train|query|gallery', got {line!r}")
        paths.append(parts[0])
        items.append(parts[1])
        statuses.append(parts[2])
    return paths, items, statuses


@DATASETS.register("inshop")
def build(root: str, split: str, transform: Callable | None = None, *, verify: bool = False,
          skip_corrupt: bool = False, progress: bool | None = None) -> ImageListDataset:
    """In-shop ``train``, ``query``, ``gallery`` or ``test`` (= query + gallery) split."""
    check_split("inshop", split, SPLITS)
    base = None
    for sub in (None, "In_shop_Clothes_Retrieval_Benchmark", "inshop"):
        cand = os.path.join(os.fspath(root), sub) if (sub and root is not None) else root
        if cand is not None and os.path.isfile(os.path.join(cand, PARTITION)):
            base = cand
            break
    if base is None:
        base = resolve_root(root, "inshop", None, ("img", PARTITION), LAYOUT)
    rel, items, statuses = read_partition(os.path.join(base, PARTITION))
    status = np.asarray(statuses)
    items_arr = np.asarray(items)
    if split == "train":
        keep, classes = status == "train", None
    else:
        test = (status == "query") | (status == "gallery")
        classes = sorted(set(items_arr[test].tolist()))
        keep = test if split == "test" else status == split
        overlap = set(items_arr[status == "train"].tolist()) & set(classes)
        if overlap:
            raise DataError(f"{base}/{PARTITION}: items {sorted(overlap)[:5]} appear in both train and query/gallery")
    paths = [os.path.join(base, p) for p, k in zip(rel, keep) if k]
    query_mask = gallery_mask = None
    if split == "test":
        query_mask, gallery_mask = status[keep] == "query", status[keep] == "gallery"
    return ImageListDataset(
        paths, items_arr[keep].tolist(), transform, classes=classes, name="inshop", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress,
        query_mask=query_mask, gallery_mask=gallery_mask,
    )
