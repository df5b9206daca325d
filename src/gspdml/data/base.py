"""Common dataset classes and helpers for the dataset modules.

:class:`LabeledDataset` is the contract every gspdml dataset follows: ``dataset[i]`` returns
``(input, label)``; ``labels`` is an ``np.ndarray`` of int64 remapped to ``0..num_classes-1``
(in the sorted order of the original class ids of that split); ``class_names[c]`` names class
``c``; ``raw_labels`` keeps the original ids. Query/gallery splits of one test set share one
label mapping (``query_mask``/``gallery_mask`` mark them on the combined ``test`` split).

:class:`ImageListDataset` reads images lazily (PIL opens the file in ``__getitem__``), so
construction only parses metadata; ``verify=True`` checks that every file exists and decodes
(a DataError listing the first bad files and how many; with ``verify_cache`` the good ones are
cached, so the next verification only decodes new or changed files) and ``skip_corrupt=True`` decodes every image
once and leaves the unreadable ones out, reporting how many (never silently).
"""
from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from gspdml.errors import DataError, InputError, unknown_choice
from gspdml.data.images import (
    VerifyCache,
    check_files_exist,
    find_unreadable,
    load_image,
    report_skipped,
    unreadable_error,
)


def check_split(dataset: str, split: str, choices: Sequence[str]) -> str:
    """Return ``split`` if it is one of ``choices``; otherwise raise ConfigError listing them."""
    if split not in choices:
        raise unknown_choice(f"split for dataset {dataset!r}", split, choices)
    return split


def check_positive_int(dataset: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (bools are not); InputError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{dataset}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def remap_labels(raw_labels: Sequence, classes: Sequence | None = None) -> tuple[np.ndarray, list]:
    """Map raw class ids to ``0..C-1``.

    ``classes`` (ordered) fixes the mapping (e.g. shared by query and gallery); by default it is the
    sorted set of ``raw_labels``. Returns ``(labels int64, classes)``.
    """
    raw = list(raw_labels)
    if classes is None:
        classes = sorted(set(raw))
    index = {c: i for i, c in enumerate(classes)}
    try:
        labels = np.fromiter((index[c] for c in raw), dtype=np.int64, count=len(raw))
    except KeyError as exc:
        raise DataError(f"label {exc.args[0]!r} is not one of the dataset's classes") from None
    return labels, list(classes)


def resolve_root(root: str | os.PathLike | None, dataset: str, subdir: str | None, required: Sequence[str], layout: str) -> str:
    """Find the dataset folder: ``root/subdir`` or ``root`` itself, whichever holds ``required``.

    Raises DataError naming the paths looked at and the expected layout.
    """
    if root is None:
        raise DataError(f"dataset {dataset!r} needs a root folder; expected layout:\n{layout}")
    root = os.fspath(root)
    candidates = [os.path.join(root, subdir), root] if subdir else [root]
    for cand in candidates:
        if all(os.path.exists(os.path.join(cand, r)) for r in required):
            return cand
    if not os.path.isdir(root):
        problem = f"root folder {root!r} does not exist"
    else:
        best = candidates[0] if os.path.isdir(candidates[0]) else root
        missing = [os.path.join(best, r) for r in required if not os.path.exists(os.path.join(best, r))]
        problem = "missing " + ", ".join(repr(m) for m in missing)
    raise DataError(f"cannot find dataset {dataset!r} under {root!r}: {problem}. Expected layout:\n{layout}")


def read_lines(path: str, dataset: str) -> list[str]:
    """Read the non-empty lines of a metadata text file (DataError if it is missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise DataError(f"metadata file of dataset {dataset!r} not found: {path!r}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"metadata file {path!r} of dataset {dataset!r} is not UTF-8 text: {exc}") from None


class LabeledDataset(Dataset, abc.ABC):
    """Base class: ``labels`` (0..C-1), ``raw_labels``, ``classes``, ``class_names``, ``num_classes``.

    ``dataset[i]`` is ``(transform(load(i)), labels[i])``; a subclass implements :meth:`load`.
    """

    labels: np.ndarray
    classes: list
    class_names: list[str]
    transform: Callable | None
    name: str = "dataset"
    split: str = ""
    query_mask: np.ndarray | None = None
    gallery_mask: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of this split."""
        return len(self.classes)

    @property
    def raw_labels(self) -> np.ndarray:
        """The original class ids of the samples (``classes[labels]``)."""
        return np.asarray(self.classes, dtype=object)[self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def load(self, index: int) -> Any:
        """The raw input of sample ``index`` (before ``transform``); subclasses implement it."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x = self.load(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)}, num_classes={self.num_classes})"


class ImageListDataset(LabeledDataset):
    """A list of image files with class ids; images are decoded lazily in ``__getitem__``.

    Args:
        paths: image file paths (absolute or relative to the working directory).
        raw_labels: the original class id of each image.
        transform: applied to the PIL image.
        classes: ordered list of class ids defining the mapping to ``0..C-1`` (default: sorted ids).
        class_names: ``{class id: name}`` (default: ``str(class id)``).
        name, split: used in messages and ``repr``.
        verify: check at construction that every listed file exists and decodes (DataError listing
            the first missing or undecodable ones and how many); images found good are cached
            (:class:`gspdml.data.images.VerifyCache`), so the next verification is fast.
        skip_corrupt: decode every image at construction and leave unreadable ones out, reporting the
            count with a SkippedImagesWarning (missing files are still an error: the metadata is wrong).
        verify_cache: the folder of the verification cache file (the dataset's metadata folder;
            the user cache folder when it is not writable); None: no cache, every verification
            decodes every image.
        query_mask, gallery_mask: optional boolean masks (e.g. In-shop's combined test split).
        progress: tqdm progress for ``skip_corrupt`` (None: only on a terminal).
    """

    def __init__(
        self,
        paths: Sequence[str],
        raw_labels: Sequence,
        transform: Callable | None = None,
        *,
        classes: Sequence | None = None,
        class_names: dict | None = None,
        name: str = "dataset",
        split: str = "",
        verify: bool = False,
        skip_corrupt: bool = False,
        query_mask: np.ndarray | None = None,
        gallery_mask: np.ndarray | None = None,
        progress: bool | None = None,
        verify_cache: str | os.PathLike | None = None,
    ) -> None:
        paths = [os.fspath(p) for p in paths]
        raw_labels = list(raw_labels)
        if len(paths) != len(raw_labels):
            raise DataError(f"{name}: {len(paths)} image paths but {len(raw_labels)} labels")
        if not paths:
            raise DataError(f"{name}: split {split!r} contains no images")
        self.name, self.split, self.transform = name, split, transform
        where = f"dataset {name!r} (split {split!r})"
        if verify or skip_corrupt:
            check_files_exist(paths, where)
            cache = VerifyCache(verify_cache) if verify_cache is not None else None
            bad = find_unreadable(paths, progress=progress, desc=f"checking {name} {split}", cache=cache)
            if bad and not skip_corrupt:
                raise unreadable_error(bad, len(paths), where)
            if bad:
                keep = np.ones(len(paths), dtype=bool)
                keep[[i for i, _, _ in bad]] = False
                before = set(raw_labels)
                paths = [p for p, k in zip(paths, keep) if k]
                raw_labels = [c for c, k in zip(raw_labels, keep) if k]
                lost = sorted(before - set(raw_labels), key=str)
                if classes is None:  # mapping derived from the kept images: the lost classes disappear
                    extra = f"; classes left without images and removed: {lost}" if lost else ""
                else:  # a given (shared, e.g. query/gallery) mapping is kept unchanged
                    extra = f"; classes left without images in this split: {lost}" if lost else ""
                query_mask = None if query_mask is None else np.asarray(query_mask)[keep]
                gallery_mask = None if gallery_mask is None else np.asarray(gallery_mask)[keep]
                report_skipped(bad, len(keep), where, extra)
                if not paths:
                    raise DataError(f"{where}: no readable images left after skipping {len(bad)} unreadable ones")
        self.paths: list[str] = paths
        self.labels, self.classes = remap_labels(raw_labels, classes)
        names = class_names or {}
        self.class_names = [str(names.get(c, c)) for c in self.classes]
        self.query_mask = None if query_mask is None else np.asarray(query_mask, dtype=bool)
        self.gallery_mask = None if gallery_mask is None else np.asarray(gallery_mask, dtype=bool)

    def load(self, index: int) -> Any:
        """The decoded RGB PIL image of sample ``index``."""
        return load_image(self.paths[index])
