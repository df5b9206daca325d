"""Cifar Collage: CIFAR-100 images on a grid with shared background super-classes (GSP paper Sec. 5.1).

Construction (as in the authors' released generator): of the 20 CIFAR-100 super-classes, 4 are
shared *background* (``large_man-made_outdoor_things``, ``large_natural_outdoor_scenes``,
``trees``, ``flowers``); the other 16 are *targets* and define the labels (0..15). A sample is a
``grid x grid`` mosaic of 32x32 CIFAR images: one target image in a random cell and background
images (drawn uniformly from the background pool, with replacement) in every other cell. With the
released ``grid=2`` a sample is 64x64 and the target covers a quarter of it.

Sub-classes (the 5 fine classes of each super-class, in CIFAR's sorted fine-label order) are split
so that test sub-classes are unseen in training, for targets and backgrounds alike:

* ``split_scheme="3/2"`` (the released generator): ``train`` uses sub-classes ``[:3]``, ``test``
  ``[3:]`` (60 / 40 fine classes, of them 48 / 32 targets).
* ``split_scheme="2/1/2"`` (the paper's text, Sec. 5.1): ``train`` ``[:2]``, ``val`` ``[2:3]``,
  ``test`` ``[3:]`` (40 / 20 / 40 fine classes, 32 / 16 / 32 targets).

The split's sub-classes are disjoint, the labels (the 16 target super-classes) are shared.
``variant="released"`` (default) is ``grid=2`` with the 3/2 split, ``variant="paper"`` ``grid=4``
(128x128) with the 2/1/2 split; ``split_scheme`` and ``grid`` override either variant's
(:func:`subclass_split` lists the fine classes of every split). Images come from the CIFAR-100 ``train`` file for
the ``train`` split and from the ``test`` file otherwise (``source`` overrides). By default each
target image of the split's pool is used once (``num_samples`` = pool size, in a seeded random
order; larger values cycle through the pool). Everything is determined by ``seed``; the cell layout
of every sample is precomputed (``target_cells``, ``background_indices``), the mosaic is composed
lazily in ``__getitem__`` and returned as a PIL image (then ``transform``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from gspdml.data.base import LabeledDataset, check_split, remap_labels
from gspdml.data.cifar import CifarArrays, load_cifar100
from gspdml.data.registry import DATASETS
from gspdml.errors import ConfigError, DataError, unknown_choice

BACKGROUND_SUPERCLASSES = ("large_man-made_outdoor_things", "large_natural_outdoor_scenes", "trees", "flowers")
VARIANTS = {"released": {"grid": 2}, "paper": {"grid": 4}}
#: sub-classes (positions among a super-class's 5 fine classes, sorted by fine label) per split
SPLIT_SCHEMES = {
    "3/2": {"train": slice(0, 3), "test": slice(3, None)},
    "2/1/2": {"train": slice(0, 2), "val": slice(2, 3), "test": slice(3, None)},
}
_VARIANT_SCHEME = {"released": "3/2", "paper": "2/1/2"}
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
CELL = 32


def subclass_pools(arr: CifarArrays, subclasses: slice) -> tuple[np.ndarray, np.ndarray, list[str], dict[int, list[int]]]:
    """Indices of target and background images of the chosen sub-classes.

    Returns ``(target_indices, background_indices, target_superclass_names, {super: [fine ids]})``.
    """
    names = arr.coarse_names
    missing = [b for b in BACKGROUND_SUPERCLASSES if b not in names]
    if missing:
        raise DataError(f"CIFAR-100 meta lacks the background super-classes {missing}; coarse names are {names}")
    fine_of: dict[int, list[int]] = {}
    for coarse in range(len(names)):
        fine_of[coarse] = sorted(np.unique(arr.labels[arr.coarse_labels == coarse]).tolist())
    chosen = np.zeros(len(arr.label_names), dtype=bool)
    for coarse, fines in fine_of.items():
        chosen[fines[subclasses]] = True
    background = np.isin(arr.coarse_labels, [names.index(b) for b in BACKGROUND_SUPERCLASSES])
    use = chosen[arr.labels]
    targets = np.flatnonzero(use & ~background)
    backgrounds = np.flatnonzero(use & background)
    target_names = [n for n in names if n not in BACKGROUND_SUPERCLASSES]
    return targets, backgrounds, target_names, fine_of


def subclass_split(arr: CifarArrays, split_scheme: str = "3/2") -> dict[str, dict[str, list[str]]]:
    """The fine classes of every split of ``split_scheme``: ``{split: {"targets": [...],
    "backgrounds": [...]}}`` (CIFAR-100 fine class names, sorted)."""
    if split_scheme not in SPLIT_SCHEMES:
        raise unknown_choice("cifar_collage split_scheme", split_scheme, SPLIT_SCHEMES)
    names = arr.coarse_names
    out: dict[str, dict[str, list[str]]] = {}
    for split, sub in SPLIT_SCHEMES[split_scheme].items():
        targets, backgrounds = [], []
        for coarse, name in enumerate(names):
            fines = sorted(np.unique(arr.labels[arr.coarse_labels == coarse]).tolist())[sub]
            (backgrounds if name in BACKGROUND_SUPERCLASSES else targets).extend(arr.label_names[f] for f in fines)
        out[split] = {"targets": sorted(targets), "backgrounds": sorted(backgrounds)}
    return out


def resolve_split_scheme(variant: str, split_scheme: str | None, split: str) -> str:
    """``split_scheme`` (default: ``variant``'s), checked, with ``split`` one of its splits."""
    scheme = split_scheme or _VARIANT_SCHEME[variant]
    if scheme not in SPLIT_SCHEMES:
        raise unknown_choice("cifar_collage split_scheme", scheme, SPLIT_SCHEMES)
    check_split(f"cifar_collage (split_scheme {scheme})", split, tuple(SPLIT_SCHEMES[scheme]))
    return scheme


class CifarCollage(LabeledDataset):
    """Cifar Collage samples; see the module docstring.

    Attributes: ``labels`` (target super-class, 0..15), ``fine_labels`` (CIFAR fine class of the
    target image), ``target_cells`` (cell index ``row * grid + col`` of the target),
    ``target_indices`` / ``background_indices`` (indices into ``images``), ``grid``, ``image_size``.
    """

    def __init__(self, arr: CifarArrays, split: str, transform: Callable | None = None, *, variant: str = "released",
                 grid: int | None = None, seed: int = 0, num_samples: int | None = None,
                 split_scheme: str | None = None) -> None:
        spec = VARIANTS[variant]
        self.split_scheme = resolve_split_scheme(variant, split_scheme, split)
        self.grid = int(grid if grid is not None else spec["grid"])
        if self.grid < 2:
            raise ConfigError(f"cifar_collage grid must be >= 2, got {self.grid}")
        targets, backgrounds, target_names, _ = subclass_pools(arr, SPLIT_SCHEMES[self.split_scheme][split])
        if len(targets) == 0 or len(backgrounds) == 0:
            raise DataError(f"cifar_collage {split}: no {'target' if len(targets) == 0 else 'background'} images in the chosen sub-classes")
        n = len(targets) if num_samples is None else int(num_samples)
        if n <= 0:
            raise ConfigError(f"cifar_collage num_samples must be positive, got {num_samples}")
        rng = np.random.default_rng([int(seed), _SPLIT_STREAM[split]])
        order = rng.permutation(len(targets))
        self.target_indices = targets[order[np.arange(n) % len(targets)]]
        cells = self.grid * self.grid
        self.target_cells = rng.integers(0, cells, size=n)
        self.background_indices = backgrounds[rng.integers(0, len(backgrounds), size=(n, cells - 1))]
        self.images = arr.images
        coarse_names = arr.coarse_names
        raw = [coarse_names[c] for c in arr.coarse_labels[self.target_indices]]
        index = {name: i for i, name in enumerate(target_names)}
        self.labels, self.classes = remap_labels(raw, sorted(set(raw), key=index.__getitem__))
        self.class_names = list(self.classes)
        self.fine_labels = arr.labels[self.target_indices]
        self.transform, self.name, self.split, self.variant, self.seed = transform, "cifar_collage", split, variant, seed
        self.image_size = CELL * self.grid

    def cell_sources(self, index: int) -> np.ndarray:
        """Image index (into ``images``) shown in each cell of sample ``index``, row-major."""
        cells = self.grid * self.grid
        out = np.empty(cells, dtype=np.int64)
        t = int(self.target_cells[index])
        out[t] = self.target_indices[index]
        out[np.arange(cells) != t] = self.background_indices[index]
        return out

    def compose(self, index: int) -> np.ndarray:
        """The mosaic of sample ``index`` as a (H, W, 3) uint8 array."""
        tiles = self.images[self.cell_sources(index)]
        g = self.grid
        return tiles.reshape(g, g, CELL, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(g * CELL, g * CELL, 3)

    def load(self, index: int) -> Image.Image:
        """The mosaic of sample ``index`` as a PIL image."""
        return Image.fromarray(self.compose(index))


@DATASETS.register("cifar_collage")
def build(root: str, split: str, transform: Callable | None = None, *, variant: str = "released", grid: int | None = None,
          seed: int = 0, num_samples: int | None = None, source: str | None = None,
          split_scheme: str | None = None) -> CifarCollage:
    """Cifar Collage ``train``/``test`` (``val`` too with the ``2/1/2`` split, ``variant="paper"``'s)
    from ``root``'s cifar-100-python/; ``split_scheme`` ``3/2`` or ``2/1/2`` (default: the variant's)."""
    if variant not in VARIANTS:
        raise unknown_choice("cifar_collage variant", variant, VARIANTS)
    scheme = resolve_split_scheme(variant, split_scheme, split)  # before the file is read
    if source is None:
        source = "train" if split == "train" else "test"
    check_split("cifar_collage source", source, ("train", "test"))
    arr = load_cifar100(root, source)
    return CifarCollage(arr, split, transform, variant=variant, grid=grid, seed=seed, num_samples=num_samples,
                        split_scheme=scheme)
