"""Users' own image data: a CSV file list or an ImageFolder-style tree.

**CSV** (``build_csv``, dataset name ``csv``; ``root`` is the CSV file, or a folder holding
``dataset.csv``)::

    path,label,split[,is_query,is_gallery]
    images/cat_01.jpg,cat,train
    images/dog_07.jpg,dog,test,1,0

``path`` is relative to the CSV's folder; a path outside that folder (absolute, or leaving it
with ``..``) is an error naming the row unless the option ``allow_outside_root=True`` is given
(``data.options.allow_outside_root: true``); ``label`` is any class name
or number (classes are sorted, numerically when all labels are integers, and remapped to 0..C-1
within each split); ``split`` is a free split name (``train``, ``test``, ``val``, ...). The splits
``query`` and ``gallery`` select the ``test`` rows with ``is_query``/``is_gallery`` = 1 (all test
rows when the columns are absent, i.e. self-retrieval); query, gallery and test share one label
mapping, and the ``test`` split carries ``query_mask``/``gallery_mask``.

**Folder** (``build_folder``, dataset name ``folder``)::

    root/<split>/<class name>/<image>.jpg|png|...

Splits are the sub-folders of ``root``; ``query`` and ``gallery`` folders (if present) share one
label mapping (the union of their class folders). Files are listed with torchvision's
``make_dataset``; an empty class folder is an error (never a silently missing class).

**Verification.** Both check every image of the split at construction (``verify=True``, the
default): it must exist and decode (PIL ``verify`` and a decode), else a DataError lists the first
bad files (CSV: with their rows) and how many. Images found good are cached in
``.gspdml-verified.json`` next to the CSV (in ``root`` for folders; the user cache folder when
that is not writable), keyed by path, size and modification time, so verifying the same files
again is nearly instant. ``verify=False`` skips the check (images are then read only when
loaded); ``skip_corrupt=True`` leaves undecodable images out instead, reporting how many.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable

import numpy as np

from gspdml.data.base import ImageListDataset, check_split
from gspdml.data.images import IMAGE_EXTENSIONS, check_files_exist
from gspdml.data.registry import DATASETS
from gspdml.errors import DataError

CSV_COLUMNS = ("path", "label", "split")
FLAG_COLUMNS = ("is_query", "is_gallery")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def _flag(value: str, column: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DataError(f"{where}: column {column!r} must be 0/1 (or true/false), got {value!r}")


def _sort_classes(labels: list[str]) -> list:
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=int)
    except ValueError:
        return unique


def read_csv(path: str) -> dict[str, list]:
    """Parse a gspdml CSV file list into columns (paths resolved against the CSV's folder;
    ``line`` is each row's line number, ``outside`` whether its path leaves the CSV's folder)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {missing}; the header must be 'path,label,split[,is_query,is_gallery]' "
                    f"(found {header})"
                )
            reader.fieldnames = header
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"CSV file list not found: {path!r} (expected columns path,label,split[,is_query,is_gallery])") from None
    if not rows:
        raise DataError(f"{path}: the CSV lists no images")
    base = os.path.dirname(os.path.abspath(path))
    cols: dict[str, list] = {"path": [], "label": [], "split": [], "is_query": [], "is_gallery": [], "line": [],
                             "outside": []}
    has_flags = {c: c in header for c in FLAG_COLUMNS}
    for lineno, row in enumerate(rows, 2):
        where = f"{path}:{lineno}"
        if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
            raise DataError(f"{where}: wrong number of fields, expected {len(header)} ({','.join(header)})")
        p, label, split = row["path"].strip(), row["label"].strip(), row["split"].strip()
        if not p or not label or not split:
            raise DataError(f"{where}: empty path, label or split")
        full = os.path.normpath(os.path.join(base, p))  # an absolute p stays itself
        cols["path"].append(full)
        cols["line"].append(lineno)
        cols["outside"].append(os.path.commonpath([base, full]) != base)
        cols["label"].append(label)
        cols["split"].append(split)
        for c in FLAG_COLUMNS:
            cols[c].append(_flag(row.get(c) or "", c, where) if has_flags[c] else True)
    return cols


@DATASETS.register("csv")
def build_csv(root: str, split: str, transform: Callable | None = None, *, verify: bool = True,
              skip_corrupt: bool = False, allow_outside_root: bool = False,
              progress: bool | None = None) -> ImageListDataset:
    """Dataset from a CSV file list (see the module docstring): ``verify`` checks that every
    image of the split exists and decodes (cached); ``allow_outside_root`` accepts paths outside
    the CSV's folder."""
    path = os.fspath(root)
    if os.path.isdir(path):
        path = os.path.join(path, "dataset.csv")
    cols = read_csv(path)
    if not allow_outside_root:
        rows = [i for i, out in enumerate(cols["outside"]) if out]
        if rows:
            i = rows[0]
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise DataError(
                f"{path}:{cols['line'][i]}: path {cols['path'][i]!r} is outside the CSV's folder "
                f"{os.path.dirname(os.path.abspath(path))!r}{more}; paths are relative to the CSV's folder. "
                "To use images elsewhere set the dataset option allow_outside_root=true "
                "(data.options.allow_outside_root: true)"
            )
    splits = np.asarray(cols["split"])
    names = sorted(set(cols["split"]))
    choices = names + (["query", "gallery"] if "test" in names and "query" not in names else [])
    check_split(f"csv {path}", split, choices)
    labels = np.asarray(cols["label"], dtype=object)
    classes = None
    query_mask = gallery_mask = None
    if split in ("query", "gallery") and "query" not in names:
        test = splits == "test"
        flag = np.asarray(cols["is_query" if split == "query" else "is_gallery"], dtype=bool)
        keep = test & flag
        if not keep.any():
            raise DataError(f"{path}: no test rows are marked {'is_query' if split == 'query' else 'is_gallery'}=1")
        classes = _sort_classes(labels[test].tolist())
    else:
        keep = splits == split
        classes = _sort_classes(labels[keep].tolist())
        if split == "test":
            query_mask = np.asarray(cols["is_query"], dtype=bool)[keep]
            gallery_mask = np.asarray(cols["is_gallery"], dtype=bool)[keep]
    paths = [p for p, k in zip(cols["path"], keep) if k]
    if verify or skip_corrupt:  # missing files named by their rows (ImageListDataset checks again)
        lines = [n for n, k in zip(cols["line"], keep) if k]
        check_files_exist(paths, f"{path} (split {split!r})", hint="Fix the paths or the CSV rows",
                          names=[f"row {n} {p!r}" for n, p in zip(lines, paths)])
    return ImageListDataset(
        paths, labels[keep].tolist(), transform, classes=classes, name="csv", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress,
        query_mask=query_mask, gallery_mask=gallery_mask, verify_cache=os.path.dirname(os.path.abspath(path)),
    )


def _list_folder(directory: str) -> list[tuple[str, str]]:
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(directory)
    except FileNotFoundError as exc:
        raise DataError(f"{directory}: {exc}; expected <split>/<class name>/<image> sub-folders") from None
    try:
        samples = make_dataset(directory, class_to_idx, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as exc:
        raise DataError(f"{directory}: {exc} (image extensions: {', '.join(IMAGE_EXTENSIONS)})") from None
    return [(p, classes[i]) for p, i in samples]


@DATASETS.register("folder")
def build_folder(root: str, split: str, transform: Callable | None = None, *, verify: bool = True,
                 skip_corrupt: bool = False, progress: bool | None = None) -> ImageListDataset:
    """Dataset from an ImageFolder-style tree ``root/<split>/<class>/<image>`` (see the module
    docstring): ``verify`` checks that every image of the split decodes (cached in ``root``)."""
    if root is None or not os.path.isdir(root):
        raise DataError(f"image folder root {root!r} does not exist; expected root/<split>/<class name>/<image>.jpg")
    root = os.fspath(root)
    splits = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not splits:
        raise DataError(f"{root}: no split sub-folders; expected root/<split>/<class name>/<image>.jpg (e.g. train/, test/)")
    check_split(f"folder {root}", split, splits)
    samples = _list_folder(os.path.join(root, split))
    classes = None
    if split in ("query", "gallery"):
        shared = set()
        for s in ("query", "gallery"):
            if s in splits:
                shared |= {name for name in os.listdir(os.path.join(root, s)) if os.path.isdir(os.path.join(root, s, name))}
        classes = sorted(shared)
    return ImageListDataset(
        [p for p, _ in samples], [c for _, c in samples], transform, classes=classes, name="folder", split=split,
        verify=verify, skip_corrupt=skip_corrupt, progress=progress, verify_cache=root,
    )
