"""CUB-200-2011 (Caltech-UCSD Birds) in its original layout.

Expected tree (``root`` may be the folder holding ``CUB_200_2011/`` or that folder itself)::

    CUB_200_2011/
        images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
        images.txt               # "<image_id> <relative path under images/>"
        image_class_labels.txt   # "<image_id> <class_id 1..200>"
        classes.txt              # "<class_id> <class name>"

Split (class-disjoint, the standard DML protocol): ``train`` = classes 1-100 (5,864 images),
``test`` = classes 101-200 (5,924 images); in general the first/second half of the sorted class ids.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from gspdml.data.base import ImageListDataset, check_split, read_lines, resolve_root
from gspdml.data.registry import DATASETS
from gspdml.data.splits import split_classes_in_half
from gspdml.errors import DataError

SPLITS = ("train", "test")
LAYOUT = """CUB_200_2011/
    images/<class folder>/<image>.jpg
    images.txt               (<image_id> <path under images/>)
    image_class_labels.txt   (<image_id> <class_id>)
    classes.txt              (<class_id> <class name>)"""
REQUIRED = ("images", "images.txt", "image_class_labels.txt", "classes.txt")


def _parse_pairs(path: str, what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for lineno, line in enumerate(read_lines(path, "cub"), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<{what} id> <value>', got {line!r}")
        key = int(parts[0])
        if key in out:
            raise DataError(f"{path}:{lineno}: duplicate {what} id {key}")
        out[key] = parts[1].strip()
    return out


@DATASETS.register("cub")
def build(root: str, split: str, transform: Callable | None = None, *, verify: bool = False,
          skip_corrupt: bool = False, progress: bool | None = None) -> ImageListDataset:
    """CUB-200-2011 ``train`` (classes 1-100) or ``test`` (classes 101-200) split.

    ``verify=True`` checks that every listed image exists; ``skip_corrupt=True`` decodes every image
    once and leaves unreadable ones out with a warning giving the count.
    """
    check_split("cub", split, SPLITS)
    base = resolve_root(root, "cub", "CUB_200_2011", REQUIRED, LAYOUT)
    images = _parse_pairs(os.path.join(base, "images.txt"), "image")
    labels = _parse_pairs(os.path.join(base, "image_class_labels.txt"), "image")
    classes = _parse_pairs(os.path.join(base, "classes.txt"), "class")
    if set(images) != set(labels):
        only_img = sorted(set(images) - set(labels))[:5]
        only_lab = sorted(set(labels) - set(images))[:5]
        raise DataError(
            f"{base}: images.txt and image_class_labels.txt list different image ids "
            f"(only in images.txt: {only_img}; only in image_class_labels.txt: {only_lab})"
        )
    image_class: dict[int, int] = {}
    for image_id, value in labels.items():
        if not value.isdigit() or int(value) not in classes:
            raise DataError(
                f"{os.path.join(base, 'image_class_labels.txt')}: image {image_id} has class {value!r}, "
                f"which is not a class id of classes.txt ({len(classes)} classes)"
            )
        image_class[image_id] = int(value)
    train_classes, test_classes = split_classes_in_half(classes)
    keep = set(train_classes if split == "train" else test_classes)
    ids = sorted(i for i in images if image_class[i] in keep)
    paths = [os.path.join(base, "images", images[i]) for i in ids]
    return ImageListDataset(
        paths, [image_class[i] for i in ids], transform, class_names=classes, name="cub", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress,
    )
