"""CIFAR-10 / CIFAR-100 from the original python-pickle archives.

Expected tree (``root`` holds the extracted folder, or is that folder)::

    cifar-10-batches-py/  data_batch_1 ... data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major 32x32 RGB) and
``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100). Splits are the archive's
``train``/``test`` files; CIFAR-100 labels are the 100 fine classes or, with
``label_type="coarse"``, the 20 super-classes. The md5 checks of torchvision's loaders are not
used, so any correctly structured pickles load.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gspdml.data.base import LabeledDataset, check_split, remap_labels, resolve_root
from gspdml.data.registry import DATASETS
from gspdml.errors import DataError, unknown_choice

SPLITS = ("train", "test")
LAYOUT10 = """cifar-10-batches-py/
    data_batch_1 ... data_batch_5, test_batch, batches.meta   (python pickles)"""
LAYOUT100 = """cifar-100-python/
    train, test, meta   (python pickles with fine_labels and coarse_labels)"""


@dataclass
class CifarArrays:
    """Decoded CIFAR arrays: ``images`` (N, 32, 32, 3) uint8 RGB and label arrays with names."""

    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    coarse_labels: np.ndarray | None = None
    coarse_names: list[str] | None = None


def _unpickle(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"CIFAR file not found: {path!r}") from None
    except Exception as exc:
        raise DataError(f"cannot unpickle CIFAR file {path!r}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(raw, dict):
        raise DataError(f"CIFAR file {path!r} does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _images(batch: dict, path: str) -> np.ndarray:
    if "data" not in batch:
        raise DataError(f"CIFAR file {path!r} has no 'data' entry (keys: {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR file {path!r}: 'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _labels(batch: dict, key: str, path: str, n: int, num: int) -> np.ndarray:
    if key not in batch:
        raise DataError(f"CIFAR file {path!r} has no {key!r} entry (keys: {sorted(batch)})")
    labels = np.asarray(batch[key], dtype=np.int64)
    if labels.shape != (n,):
        raise DataError(f"CIFAR file {path!r}: {n} images but {labels.size} {key}")
    if labels.size and (labels.min() < 0 or labels.max() >= num):
        raise DataError(f"CIFAR file {path!r}: {key} outside 0..{num - 1}")
    return labels


def load_cifar10(root: str, split: str) -> CifarArrays:
    """Read the CIFAR-10 ``train`` (5 data batches) or ``test`` split."""
    check_split("cifar10", split, SPLITS)
    base = resolve_root(root, "cifar10", "cifar-10-batches-py", ("batches.meta",), LAYOUT10)
    names = _names(_unpickle(os.path.join(base, "batches.meta")).get("label_names", []))
    if len(names) != 10:
        raise DataError(f"{os.path.join(base, 'batches.meta')}: expected 10 label_names, got {len(names)}")
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for fname in files:
        path = os.path.join(base, fname)
        batch = _unpickle(path)
        images.append(_images(batch, path))
        labels.append(_labels(batch, "labels", path, len(images[-1]), 10))
    return CifarArrays(np.concatenate(images), np.concatenate(labels), names)


def load_cifar100(root: str, split: str) -> CifarArrays:
    """Read the CIFAR-100 ``train`` or ``test`` split with fine and coarse labels."""
    check_split("cifar100", split, SPLITS)
    base = resolve_root(root, "cifar100", "cifar-100-python", ("meta",), LAYOUT100)
    meta = _unpickle(os.path.join(base, "meta"))
    fine_names = _names(meta.get("fine_label_names", []))
    coarse_names = _names(meta.get("coarse_label_names", []))
    if len(fine_names) != 100 or len(coarse_names) != 20:
        raise DataError(
            f"{os.path.join(base, 'meta')}: expected 100 fine_label_names and 20 coarse_label_names, "
            f"got {len(fine_names)} and {len(coarse_names)}"
        )
    path = os.path.join(base, split)
    batch = _unpickle(path)
    images = _images(batch, path)
    fine = _labels(batch, "fine_labels", path, len(images), 100)
    coarse = _labels(batch, "coarse_labels", path, len(images), 20)
    return CifarArrays(images, fine, fine_names, coarse, coarse_names)


class ArrayImageDataset(LabeledDataset):
    """In-memory uint8 images (N, H, W, 3) returned as PIL images (then ``transform``) with labels."""

    def __init__(self, images: np.ndarray, raw_labels: np.ndarray, class_names: list[str],
                 transform: Callable | None = None, name: str = "dataset", split: str = "") -> None:
        self.images = images
        self.labels, self.classes = remap_labels(np.asarray(raw_labels).tolist())
        self.class_names = [class_names[c] for c in self.classes]
        self.transform, self.name, self.split = transform, name, split

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as a PIL image."""
        return Image.fromarray(self.images[index])


@DATASETS.register("cifar10")
def build_cifar10(root: str, split: str, transform: Callable | None = None) -> ArrayImageDataset:
    """CIFAR-10 ``train`` (50,000) or ``test`` (10,000) images with the 10 class labels."""
    arr = load_cifar10(root, split)
    return ArrayImageDataset(arr.images, arr.labels, arr.label_names, transform, "cifar10", split)


@DATASETS.register("cifar100")
def build_cifar100(root: str, split: str, transform: Callable | None = None, *, label_type: str = "fine") -> ArrayImageDataset:
    """CIFAR-100 ``train``/``test`` images labelled by ``fine`` (100) or ``coarse`` (20) classes."""
    if label_type not in ("fine", "coarse"):
        raise unknown_choice("CIFAR-100 label_type", label_type, ("fine", "coarse"))
    arr = load_cifar100(root, split)
    if label_type == "fine":
        return ArrayImageDataset(arr.images, arr.labels, arr.label_names, transform, "cifar100", split)
    return ArrayImageDataset(arr.images, arr.coarse_labels, arr.coarse_names, transform, "cifar100", split)
