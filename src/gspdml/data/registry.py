"""Dataset registry: ``DATASETS`` and ``build_dataset(name, root, split, transform=None, **options)``.

A builder has the signature ``build(root, split, transform=None, **options)`` and returns a
dataset whose items are ``(input, label)``, with ``labels`` (np.ndarray, 0..C-1) and
``num_classes``. The built-in dataset modules register their builders with
``@DATASETS.register("name")``; they are imported at the end of this module, so every built-in
name is known as soon as ``DATASETS`` is.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gspdml.registry import Registry

__all__ = ["DATASETS", "build_dataset"]

#: name -> builder ``(root, split, transform=None, **options) -> dataset``.
DATASETS = Registry("dataset", skip_args=("root", "split", "transform"), noun="option")


def build_dataset(name: str, root: Any, split: str, transform: Callable | None = None, **options: Any):
    """Build dataset ``name`` (see ``DATASETS``) from ``root`` for ``split`` (``train``, ``test``, ...).

    ``options`` are passed to the dataset's builder (e.g. ``verify=True``, ``skip_corrupt=True``,
    ``seed=0``); an option the builder does not accept is a ConfigError listing the accepted ones.
    """
    return DATASETS.build(name, root, split, transform, **options)


# The built-in datasets register themselves on import (kept last: they import DATASETS).
import gspdml.data.cars  # noqa: E402,F401
import gspdml.data.cifar  # noqa: E402,F401
import gspdml.data.cifar_collage  # noqa: E402,F401
import gspdml.data.cub  # noqa: E402,F401
import gspdml.data.custom  # noqa: E402,F401
import gspdml.data.digits_collage  # noqa: E402,F401
import gspdml.data.inshop  # noqa: E402,F401
import gspdml.data.sop  # noqa: E402,F401
import gspdml.data.tokens  # noqa: E402,F401
