"""Class-disjoint splits: conventional halves, MLRC folds, class subsets.

The MLRC protocol ("A Metric Learning Reality Check") sorts the classes, uses the first half for
training+validation and the second half for testing, and builds 4 class-disjoint folds over the
first half: fold ``k`` validates on the ``k``-th contiguous quarter of the sorted training classes
and trains on the other three quarters.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from gspdml.data.batches import dataset_labels
from gspdml.errors import InputError


def split_classes_in_half(class_ids: Sequence) -> tuple[list, list]:
    """Sort the class ids; return (first half, second half) (the conventional DML train/test split).

    With an odd number of classes the first half gets the extra class.
    """
    classes = sorted(set(class_ids))
    half = (len(classes) + 1) // 2
    return classes[:half], classes[half:]


def mlrc_folds(class_ids: Sequence, num_folds: int = 4) -> list[tuple[list, list]]:
    """MLRC cross-validation folds over the training classes.

    Args:
        class_ids: the training classes (any order, duplicates ignored).
        num_folds: number of folds (4 in MLRC).

    Returns:
        ``[(train_classes, val_classes), ...]`` of length ``num_folds``; ``val_classes`` of fold k is
        the k-th contiguous chunk of the sorted class list (sizes differ by at most one, as
        ``np.array_split``), ``train_classes`` the remaining classes, both sorted.
    """
    classes = sorted(set(class_ids))
    if not isinstance(num_folds, (int, np.integer)) or num_folds < 2:
        raise InputError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    if len(classes) < num_folds:
        raise InputError(f"cannot build {num_folds} class-disjoint folds from {len(classes)} classes; need at least {num_folds}")
    bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(len(classes)), num_folds)])
    folds = []
    for k in range(num_folds):
        val = classes[bounds[k]:bounds[k + 1]]
        train = classes[:bounds[k]] + classes[bounds[k + 1]:]
        folds.append((train, val))
    return folds


class ClassSubset(Dataset):
    """The samples of ``dataset`` whose label is in ``classes``, optionally relabelled to ``0..C-1``.

    Keeps the dataset contract: ``labels``, ``num_classes``, ``classes`` (the parent's label values
    kept), ``class_names``, ``indices`` (into the parent) and ``paths`` when the parent has them.
    """

    def __init__(self, dataset: Any, classes: Sequence[int], relabel: bool = True) -> None:
        parent_labels = dataset_labels(dataset)
        wanted = sorted(set(int(c) for c in classes))
        present = set(np.unique(parent_labels).tolist())
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise InputError(
                f"classes {unknown[:10]} are not labels of the dataset (its labels are 0..{len(present) - 1}); "
                "subset_by_classes takes the dataset's remapped labels"
            )
        if not wanted:
            raise InputError("subset_by_classes needs at least one class")
        self.dataset = dataset
        self.relabel = relabel
        self.classes = wanted
        self.indices = np.flatnonzero(np.isin(parent_labels, wanted))
        kept = parent_labels[self.indices]
        if relabel:
            self.labels = np.searchsorted(np.asarray(wanted), kept).astype(np.int64)
        else:
            self.labels = kept.astype(np.int64)
        parent_names = getattr(dataset, "class_names", None)
        self.class_names = [str(parent_names[c]) if parent_names is not None else str(c) for c in wanted]
        self.transform = getattr(dataset, "transform", None)
        for attr in ("query_mask", "gallery_mask"):
            mask = getattr(dataset, attr, None)
            setattr(self, attr, None if mask is None else np.asarray(mask)[self.indices])

    @property
    def num_classes(self) -> int:
        """Number of classes kept (with ``relabel=False`` labels may exceed it)."""
        return len(self.classes)

    @property
    def paths(self) -> list[str]:
        """File paths of the kept samples (when the parent dataset has ``paths``)."""
        parent = getattr(self.dataset, "paths", None)
        if parent is None:
            raise AttributeError("the parent dataset has no paths")
        return [parent[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        x, _ = self.dataset[int(self.indices[index])]
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ClassSubset(size={len(self)}, num_classes={self.num_classes}, of={self.dataset!r})"


def subset_by_classes(dataset: Any, classes: Sequence[int], relabel: bool = True) -> ClassSubset:
    """Keep the samples of ``dataset`` whose (remapped) label is in ``classes``; see :class:`ClassSubset`."""
    return ClassSubset(dataset, classes, relabel=relabel)


def relabeled(dataset: Any) -> ClassSubset:
    """All of ``dataset`` with its labels remapped to ``0..C-1`` (sorted class order; ``classes``
    holds the original label values). Losses with proxies and L_ZS need contiguous labels."""
    return ClassSubset(dataset, np.unique(dataset_labels(dataset)).tolist(), relabel=True)


def split_train_val(
    dataset: Any, fold: int, num_folds: int = 4, eval_dataset: Any = None
) -> tuple[ClassSubset, ClassSubset]:
    """MLRC fold ``fold`` of a training dataset: ``(train subset, validation subset)``, both relabelled.

    ``eval_dataset`` is the same split with the evaluation transform; when given, the validation
    subset is taken from it (the training subset always from ``dataset``).
    """
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < num_folds:
        raise InputError(f"fold must be an integer in 0..{num_folds - 1}, got {fold!r}")
    folds = mlrc_folds(np.unique(dataset_labels(dataset)).tolist(), num_folds)
    train, val = folds[fold]
    return subset_by_classes(dataset, train), subset_by_classes(dataset if eval_dataset is None else eval_dataset, val)
