"""Stanford Online Products in its original layout.

Expected tree (``root`` may be the folder holding ``Stanford_Online_Products/`` or that folder)::

    Stanford_Online_Products/
        Ebay_train.txt    # header "image_id class_id super_class_id path", then one line per image
        Ebay_test.txt
        bicycle_final/111085122871_0.JPG ...   (12 <category>_final/ folders)

Split: ``train`` = Ebay_train.txt (59,551 images, 11,318 classes), ``test`` = Ebay_test.txt
(60,502 images, 11,316 classes). ``super_labels`` holds the super-class (category) of each image.
Construction parses the text file only (no per-file check; ``verify=True`` checks every file).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from gspdml.data.base import ImageListDataset, check_split, read_lines, resolve_root
from gspdml.data.registry import DATASETS
from gspdml.errors import DataError

SPLITS = ("train", "test")
HEADER = ["image_id", "class_id", "super_class_id", "path"]
LAYOUT = """Stanford_Online_Products/
    Ebay_train.txt, Ebay_test.txt  (header: image_id class_id super_class_id path)
    <category>_final/<image>.JPG"""


def read_list(path: str) -> tuple[list[str], list[int], list[int]]:
    """Parse an Ebay_*.txt file: (relative paths, class ids, super-class ids)."""
    lines = read_lines(path, "sop")
    if not lines or lines[0].split() != HEADER:
        raise DataError(f"{path}: first line must be the header {' '.join(HEADER)!r}, got {lines[0] if lines else ''!r}")
    paths, classes, supers = [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split()
        if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise DataError(f"{path}:{lineno}: expected 'image_id class_id super_class_id path', got {line!r}")
        classes.append(int(parts[1]))
        supers.append(int(parts[2]))
        paths.append(parts[3])
    if not paths:
        raise DataError(f"{path}: no images listed")
    return paths, classes, supers


@DATASETS.register("sop")
def build(root: str, split: str, transform: Callable | None = None, *, verify: bool = False,
          skip_corrupt: bool = False, progress: bool | None = None) -> ImageListDataset:
    """Stanford Online Products ``train`` or ``test`` split (class-disjoint, as distributed)."""
    check_split("sop", split, SPLITS)
    fname = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
    base = resolve_root(root, "sop", "Stanford_Online_Products", (fname,), LAYOUT)
    rel, classes, supers = read_list(os.path.join(base, fname))
    ds = ImageListDataset(
        [os.path.join(base, p) for p in rel], classes, transform, name="sop", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress,
    )
    super_of = dict(zip(classes, supers))
    ds.super_labels = np.asarray([super_of[c] for c in ds.raw_labels.tolist()], dtype=np.int64)
    return ds
