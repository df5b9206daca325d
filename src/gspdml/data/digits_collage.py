"""Digits Collage: a cluttered, class-disjoint retrieval task built from scikit-learn's bundled
handwritten digits (``sklearn.datasets.load_digits``: 1,797 images of 8x8 pixels, no download).

It is the shipped analogue of the paper's Cifar Collage (Sec. 5.1): every image holds the digits
that define its class *and* nuisance digits from shared background classes, so global average
pooling is handicapped and a pooling that selects features can help.

Design
------
* **Background digits** 0-3 are shared by all classes. **Target digits** 4-9.
* A **class** is an unordered pair of distinct target digits: C(6, 2) = 15 classes.
* An **image** is a ``grid x grid`` arrangement of 8x8 digits (default 3x3 -> 24x24 pixels,
  upsampled x2 by pixel repetition -> 48x48, one channel, values in [0, 1]). The two target
  digits sit in two random cells; every other cell holds a random background digit. With the
  default 3x3 grid 7 of 9 cells (78 %) are nuisance; ``grid=2`` gives 50 %, ``grid=4`` 88 %
  (the clutter sweep of ``gspdml demo --full``).
* **Unseen classes**: the 15 pairs are split class-disjointly, 8 for training and 7 for test
  (``TRAIN_PAIRS`` / ``TEST_PAIRS``). The split is chosen by hand so that every target digit
  occurs in 2-3 training pairs and 2-3 test pairs (a Hamiltonian cycle 4-5-6-7-8-9-4 plus the
  pairs (4,7) and (5,8) for training): the network sees every target digit during training, but
  the test *combinations* are new, so retrieval on the test split measures transfer to unseen
  classes, as in the paper's zero-shot setting.
* **No test digit image is seen in training**: the 1,797 digit images (no two identical) are split
  50/50 within each digit (``seed``-determined), train collages draw only from the first half and
  test collages only from the second half.
* Counts (defaults): train 8 classes x 120 = 960 images, test 7 classes x 60 = 420 images,
  drawn from 897 / 900 digit images respectively.

Every image comes with its per-cell target mask (``target_masks``, (N, grid, grid) bool), the
digit in each cell (``cell_digits``) and the sklearn index of each cell's digit image
(``cell_image_ids``), so pooling-weight maps can be scored (mean weight on target vs background
cells) and the image split can be verified. Everything is deterministic given ``seed``.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np
import torch
from torch.utils.data import Dataset

from gspdml.data.base import check_positive_int
from gspdml.data.registry import DATASETS
from gspdml.errors import InputError

SPLITS = ("train", "test")
BACKGROUND_DIGITS = (0, 1, 2, 3)
TARGET_DIGITS = (4, 5, 6, 7, 8, 9)
ALL_PAIRS = tuple(combinations(TARGET_DIGITS, 2))
TRAIN_PAIRS = ((4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (4, 9), (4, 7), (5, 8))
TEST_PAIRS = tuple(p for p in ALL_PAIRS if p not in TRAIN_PAIRS)
DIGIT_SIZE = 8
GRID_SIZES = (2, 3, 4)


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(images float32 (1797, 8, 8) in [0, 1], targets int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return images, digits.target.astype(np.int64)


def split_digit_images(seed: int = 0) -> dict[str, dict[int, np.ndarray]]:
    """Split the digit images 50/50 within each digit: ``{"train": {digit: ids}, "test": {...}}``.

    ``ids`` index into :func:`load_digit_images`. Train and test ids are disjoint.
    """
    _, targets = load_digit_images()
    rng = np.random.default_rng([int(seed), 7919])
    out: dict[str, dict[int, np.ndarray]] = {"train": {}, "test": {}}
    for digit in range(10):
        ids = rng.permutation(np.flatnonzero(targets == digit))
        half = len(ids) // 2
        out["train"][digit] = np.sort(ids[:half])
        out["test"][digit] = np.sort(ids[half:])
    return out


class DigitsCollage(Dataset):
    """Collage images with labels: items are ``(FloatTensor (1, S, S), int label)``.

    Attributes: ``images`` (np.ndarray (N, S, S) float32), ``labels`` (0..C-1 within the split),
    ``pairs`` (the target-digit pair of each split label), ``target_masks`` (N, grid, grid) bool,
    ``cell_digits`` (N, grid, grid) int, ``cell_image_ids`` (N, grid, grid) int (sklearn index),
    ``grid``, ``upsample``, ``num_classes``, ``background_share`` (fraction of nuisance cells).
    """

    def __init__(self, images, labels, pairs, target_masks, cell_digits, cell_image_ids, grid,
                 upsample, transform=None) -> None:
        self.images = images
        self.labels = labels
        self.pairs = tuple(pairs)
        self.target_masks = target_masks
        self.cell_digits = cell_digits
        self.cell_image_ids = cell_image_ids
        self.grid = int(grid)
        self.upsample = int(upsample)
        self.num_classes = len(self.pairs)
        self.background_share = 1.0 - 2.0 / (grid * grid)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = torch.from_numpy(self.images[index]).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def pixel_masks(self, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """Target masks upsampled to ``size`` (default: the image size) by cell, (N, h, w) bool.

        Useful to score a pooling-weight map of shape (h, w) whose cells align with the grid
        (h and w must be multiples of ``grid``).
        """
        if size is None:
            size = self.images.shape[-1]
        h, w = (size, size) if isinstance(size, int) else size
        if h % self.grid or w % self.grid:
            raise InputError(f"digits_collage: mask size {(h, w)} is not a multiple of the grid {self.grid}")
        return np.repeat(np.repeat(self.target_masks, h // self.grid, axis=1), w // self.grid, axis=2)


def _check_pairs(pairs, name: str) -> tuple[tuple[int, int], ...]:
    out = []
    for pair in pairs:
        p = tuple(sorted(int(d) for d in pair))
        if len(p) != 2 or p[0] == p[1] or not set(p) <= set(TARGET_DIGITS):
            raise InputError(f"digits_collage: {name} entry {pair!r} is not a pair of two distinct "
                             f"target digits from {TARGET_DIGITS}")
        out.append(p)
    if len(set(out)) != len(out) or not out:
        raise InputError(f"digits_collage: {name} must be a non-empty list of distinct pairs, got {pairs!r}")
    return tuple(out)


@DATASETS.register("digits_collage")
def build(root=None, split: str = "train", transform=None, *, grid: int = 3, upsample: int = 2,
          samples_per_class: int | None = None, pairs=None, seed: int = 0) -> DigitsCollage:
    """Build one split of the Digits Collage.

    Args:
        root: ignored (the data ships with scikit-learn); accepted for the common signature.
        split: ``"train"`` (8 classes) or ``"test"`` (7 unseen classes).
        transform: optional callable applied to each image tensor (1, S, S).
        grid: cells per side (2, 3 or 4); the image is ``grid * 8 * upsample`` pixels wide.
        upsample: integer pixel-repetition factor (default 2: 3x3 grid -> 48x48).
        samples_per_class: images per class (default 120 for train, 60 for test).
        pairs: optional list of target-digit pairs for this split (default ``TRAIN_PAIRS`` or
            ``TEST_PAIRS``); must be pairs of distinct digits from 4-9.
        seed: random seed for the digit-image split and the composition of the collages.
    """
    if split not in SPLITS:
        raise InputError(f"digits_collage: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if grid not in GRID_SIZES:
        raise InputError(f"digits_collage: grid must be one of {GRID_SIZES}, got {grid!r}")
    upsample = check_positive_int("digits_collage", "upsample", upsample)
    if samples_per_class is None:
        samples_per_class = 120 if split == "train" else 60
    samples_per_class = check_positive_int("digits_collage", "samples_per_class", samples_per_class)
    if pairs is None:
        pairs = TRAIN_PAIRS if split == "train" else TEST_PAIRS
    pairs = _check_pairs(pairs, "pairs")

    digit_images, _ = load_digit_images()
    pools = split_digit_images(seed)[split]
    rng = np.random.default_rng([int(seed), SPLITS.index(split), grid])
    cells = grid * grid
    n = len(pairs) * samples_per_class
    labels = np.repeat(np.arange(len(pairs)), samples_per_class).astype(np.int64)

    cell_digits = rng.choice(BACKGROUND_DIGITS, size=(n, cells))
    target_masks = np.zeros((n, cells), dtype=bool)
    for i, label in enumerate(labels):
        where = rng.choice(cells, size=2, replace=False)
        cell_digits[i, where] = pairs[label]
        target_masks[i, where] = True
    cell_image_ids = np.empty((n, cells), dtype=np.int64)
    for digit in range(10):
        hit = cell_digits == digit
        cell_image_ids[hit] = rng.choice(pools[digit], size=int(hit.sum()))

    tiles = digit_images[cell_image_ids].reshape(n, grid, grid, DIGIT_SIZE, DIGIT_SIZE)
    images = tiles.transpose(0, 1, 3, 2, 4).reshape(n, grid * DIGIT_SIZE, grid * DIGIT_SIZE)
    if upsample > 1:
        images = np.repeat(np.repeat(images, upsample, axis=1), upsample, axis=2)
    return DigitsCollage(
        np.ascontiguousarray(images, dtype=np.float32), labels, pairs,
        target_masks.reshape(n, grid, grid), cell_digits.reshape(n, grid, grid),
        cell_image_ids.reshape(n, grid, grid), grid, upsample, transform,
    )
