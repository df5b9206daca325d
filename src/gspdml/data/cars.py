"""Cars196 (Stanford Cars) in its original layout.

Expected tree (``root`` holds both entries)::

    car_ims/000001.jpg ... 016185.jpg
    cars_annos.mat

``cars_annos.mat`` (read with ``scipy.io.loadmat``) holds ``annotations``, a 1xN MATLAB struct array
with fields ``relative_im_path`` ('car_ims/000001.jpg'), ``bbox_x1``, ``bbox_y1``, ``bbox_x2``,
``bbox_y2``, ``class`` (1..196) and ``test`` (0/1, the classification split, unused here), and
``class_names``, a 1x196 cell array of strings.

Split (class-disjoint, the standard DML protocol, over all 16,185 images): ``train`` = classes 1-98,
``test`` = classes 99-196; in general the first/second half of the sorted class ids.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from gspdml.data.base import ImageListDataset, check_split, resolve_root
from gspdml.data.registry import DATASETS
from gspdml.data.splits import split_classes_in_half
from gspdml.errors import DataError

SPLITS = ("train", "test")
LAYOUT = """<root>/
    car_ims/000001.jpg ...
    cars_annos.mat   (struct array 'annotations' with fields relative_im_path, bbox_x1, bbox_y1,
                      bbox_x2, bbox_y2, class, test; cell array 'class_names')"""
FIELDS = ("relative_im_path", "class")


def read_annotations(path: str) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """Parse ``cars_annos.mat``: (relative image paths, class ids 1-based, {class id: name})."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except FileNotFoundError:
        raise DataError(f"Cars196 annotation file not found: {path!r}") from None
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on bad files
        raise DataError(f"cannot read Cars196 annotations {path!r} as a MATLAB file: {exc}") from None
    if "annotations" not in mat:
        raise DataError(f"{path}: no 'annotations' variable (found: {sorted(k for k in mat if not k.startswith('__'))})")
    ann = np.atleast_1d(mat["annotations"])
    names = ann.dtype.names or ()
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise DataError(f"{path}: 'annotations' lacks the fields {missing} (has {list(names)}); expected the original cars_annos.mat")
    paths = [str(p) for p in ann["relative_im_path"]]
    try:
        classes = np.asarray([int(c) for c in ann["class"]], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: non-integer class in 'annotations': {exc}") from None
    class_names: dict[int, str] = {}
    if "class_names" in mat:
        raw = np.atleast_1d(mat["class_names"])
        class_names = {i + 1: str(n) for i, n in enumerate(raw)}
        bad = sorted(set(classes.tolist()) - set(class_names))
        if bad:
            raise DataError(f"{path}: annotations use classes {bad[:10]} but class_names has only {len(class_names)} entries")
    return paths, classes, class_names


@DATASETS.register("cars196")
def build(root: str, split: str, transform: Callable | None = None, *, verify: bool = False,
          skip_corrupt: bool = False, progress: bool | None = None) -> ImageListDataset:
    """Cars196 ``train`` (classes 1-98) or ``test`` (classes 99-196) split."""
    check_split("cars196", split, SPLITS)
    base = resolve_root(root, "cars196", None, ("car_ims", "cars_annos.mat"), LAYOUT)
    rel_paths, classes, class_names = read_annotations(os.path.join(base, "cars_annos.mat"))
    train_classes, test_classes = split_classes_in_half(classes.tolist())
    keep = np.isin(classes, train_classes if split == "train" else test_classes)
    paths = [os.path.join(base, p) for p, k in zip(rel_paths, keep) if k]
    return ImageListDataset(
        paths, classes[keep].tolist(), transform, class_names=class_names, name="cars196", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress,
    )
