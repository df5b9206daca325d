"""Dataset registry: ``build_dataset(name, root, split, transform=None, **options)``.

``DATASETS`` maps a dataset name to ``"module"`` or ``"module:function"`` (default function
``build``); the module is imported only when its dataset is built, so a missing or broken module
only affects its own names. A builder has the signature
``build(root, split, transform=None, **options)`` and returns a dataset whose items are
``(input, label)`` with ``labels`` (np.ndarray, 0..C-1) and ``num_classes``.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from gspdml.errors import ConfigError, unknown_choice

DATASETS: dict[str, str] = {
    "cub": "gspdml.data.cub",
    "cars196": "gspdml.data.cars",
    "sop": "gspdml.data.sop",
    "inshop": "gspdml.data.inshop",
    "cifar10": "gspdml.data.cifar:build_cifar10",
    "cifar100": "gspdml.data.cifar:build_cifar100",
    "cifar_collage": "gspdml.data.cifar_collage",
    "digits_collage": "gspdml.data.digits_collage",
    "tokens": "gspdml.data.tokens",
    "csv": "gspdml.data.custom:build_csv",
    "folder": "gspdml.data.custom:build_folder",
}


def get_builder(name: str) -> Callable[..., Any]:
    """Return the builder function of dataset ``name`` (ConfigError for unknown names)."""
    key = str(name).lower()
    if key not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    target = DATASETS[key]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"dataset {name!r} is provided by module {module_name!r}, which cannot be imported: {exc}") from exc
    builder = getattr(module, attr or "build", None)
    if builder is None:
        raise ConfigError(f"module {module_name!r} has no dataset builder {attr or 'build'!r} for dataset {name!r}")
    return builder


def build_dataset(name: str, root: Any, split: str, transform: Callable | None = None, **options: Any):
    """Build dataset ``name`` (see ``DATASETS``) from ``root`` for ``split`` (``train``, ``test``, ...).

    ``options`` are passed to the dataset's builder (e.g. ``verify=True``, ``skip_corrupt=True``,
    ``seed=0``); an option the builder does not accept is a ConfigError listing the accepted ones.
    """
    builder = get_builder(name)
    try:
        inspect.signature(builder).bind(root, split, transform, **options)
    except TypeError:
        params = inspect.signature(builder).parameters
        accepted = [p for p in params if p not in ("root", "split", "transform") and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        unknown = sorted(set(options) - set(accepted))
        raise ConfigError(
            f"dataset {name!r} does not accept the option(s) {unknown or sorted(options)}; "
            f"valid options are: {', '.join(accepted) or '(none)'}"
        ) from None
    return builder(root, split, transform, **options)
