"""Synthetic token corpus of the paper's controlled study (GSP paper, Sec. 5.1, Fig. 3a).

Each of ``num_classes`` classes (16) owns ``tokens_per_class`` (4) token ids; ``num_background``
(4) further token ids are shared by every class. A sample is a bag of ``bag_size`` (50) token
ids: a background share ``r ~ N(0.5, 0.1)`` (clipped to [0, 1]) of the bag is drawn uniformly
from the background tokens, the rest uniformly from the class's own tokens, and the bag is
shuffled. Token ids are laid out as::

    class c owns ids  c * tokens_per_class ... (c + 1) * tokens_per_class - 1
    background ids    num_classes * tokens_per_class ... + num_background - 1

so with the defaults there are 68 token ids (64 class tokens + 4 background tokens). The tokens
are meant to be trainable embeddings (``token_embedding`` backbone) pooled by GAP or GSP.

Two ways to split train from test:

* ``classes="same"`` (default, as in the paper): all classes in both splits, different samples
  (train and test are drawn from independent random streams of the same seed).
* ``classes="disjoint"``: train uses the first half of the classes (0-7), test the second half
  (8-15), labels remapped to 0..C-1 within each split. Note that the test classes' tokens are
  then never seen in training.

Everything is deterministic given ``seed``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from gspdml.data.base import check_positive_int
from gspdml.data.registry import DATASETS
from gspdml.errors import InputError

SPLITS = ("train", "test")
CLASS_MODES = ("same", "disjoint")


class TokenBags(Dataset):
    """Bags of token ids with labels: items are ``(LongTensor (bag_size,), int label)``.

    Attributes: ``tokens`` (np.ndarray (N, bag_size) int64), ``labels`` (np.ndarray (N,) int64,
    0..num_classes-1 within the split), ``class_ids`` (original class id of each split label),
    ``background_mask`` (np.ndarray (N, bag_size) bool, True where a token is a background
    token), ``num_classes``, ``num_tokens`` (size of the token vocabulary, for the embedding).
    """

    def __init__(self, tokens: np.ndarray, labels: np.ndarray, class_ids: np.ndarray,
                 background_mask: np.ndarray, num_tokens: int, transform=None) -> None:
        self.tokens = tokens
        self.labels = labels
        self.class_ids = class_ids
        self.background_mask = background_mask
        self.num_classes = int(len(class_ids))
        self.num_tokens = int(num_tokens)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = torch.from_numpy(self.tokens[index])
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


@DATASETS.register("tokens")
def build(root=None, split: str = "train", transform=None, *, num_classes: int = 16,
          tokens_per_class: int = 4, num_background: int = 4, bag_size: int = 50,
          samples_per_class: int | None = None, background_mean: float = 0.5,
          background_std: float = 0.1, classes: str = "same", seed: int = 0) -> TokenBags:
    """Build one split of the synthetic token corpus.

    Args:
        root: ignored (the corpus is generated); accepted for the common dataset signature.
        split: ``"train"`` or ``"test"``.
        transform: optional callable applied to each bag (LongTensor).
        num_classes, tokens_per_class, num_background, bag_size: corpus shape (paper: 16, 4, 4, 50).
        samples_per_class: bags per class in this split (default 100 for train, 50 for test).
        background_mean, background_std: the background share ``r ~ N(mean, std)``, clipped to [0, 1].
        classes: ``"same"`` (all classes in both splits) or ``"disjoint"`` (train: first half of
            the classes, test: second half).
        seed: random seed; the same seed always gives the same corpus.
    """
    if split not in SPLITS:
        raise InputError(f"tokens dataset: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if classes not in CLASS_MODES:
        raise InputError(f"tokens dataset: classes must be one of {', '.join(CLASS_MODES)}, got {classes!r}")
    num_classes = check_positive_int("tokens dataset", "num_classes", num_classes, 2 if classes == "disjoint" else 1)
    tokens_per_class = check_positive_int("tokens dataset", "tokens_per_class", tokens_per_class)
    num_background = check_positive_int("tokens dataset", "num_background", num_background)
    bag_size = check_positive_int("tokens dataset", "bag_size", bag_size)
    if samples_per_class is None:
        samples_per_class = 100 if split == "train" else 50
    samples_per_class = check_positive_int("tokens dataset", "samples_per_class", samples_per_class)
    if not (np.isfinite(background_mean) and np.isfinite(background_std) and background_std >= 0):
        raise InputError("tokens dataset: background_mean must be finite and background_std finite and >= 0, "
                         f"got mean={background_mean!r}, std={background_std!r}")

    if classes == "same":
        class_ids = np.arange(num_classes)
    else:
        half = num_classes // 2
        class_ids = np.arange(half) if split == "train" else np.arange(half, num_classes)
    first_background = num_classes * tokens_per_class
    num_tokens = first_background + num_background

    # Independent streams per (seed, split): train and test never share a bag draw.
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    n = len(class_ids) * samples_per_class
    labels = np.repeat(np.arange(len(class_ids)), samples_per_class)
    share = np.clip(rng.normal(background_mean, background_std, size=n), 0.0, 1.0)
    n_background = np.rint(share * bag_size).astype(np.int64)
    class_tok = rng.integers(0, tokens_per_class, size=(n, bag_size))
    back_tok = rng.integers(0, num_background, size=(n, bag_size))
    position = np.arange(bag_size)[None, :]
    is_background = position < n_background[:, None]
    tokens = np.where(is_background, first_background + back_tok,
                      class_ids[labels][:, None] * tokens_per_class + class_tok)
    perm = np.argsort(rng.random((n, bag_size)), axis=1)
    tokens = np.take_along_axis(tokens, perm, axis=1).astype(np.int64)
    is_background = np.take_along_axis(is_background, perm, axis=1)
    return TokenBags(tokens, labels.astype(np.int64), class_ids, is_background, num_tokens, transform)
