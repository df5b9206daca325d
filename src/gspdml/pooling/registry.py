"""Pooling registry: name -> pooling class, and :func:`build_pooling`.

Adding a pooling is a one-file change::

    # my_package/my_pooling.py
    from gspdml.pooling.baselines import Pooling
    from gspdml.pooling.registry import register_pooling

    @register_pooling("mine")
    class MyPooling(Pooling):
        def pool(self, feats, mask):   # feats (B, n, C), mask (B, n) bool or None
            ...
            return pooled, weights, None

Importing the module registers the name; the built-in modules listed in
:data:`BUILTIN_MODULES` are imported when this registry is imported. Any ``nn.Module`` class whose
constructor takes the feature dimension first and whose forward follows the pooling contract
(``forward(x, mask=None, return_details=False)``) can be registered.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from gspdml.errors import ConfigError, unknown_choice

__all__ = ["POOLINGS", "register_pooling", "build_pooling", "pooling_arguments", "BUILTIN_MODULES"]

#: name -> pooling class (filled by :func:`register_pooling`).
POOLINGS: dict[str, type[nn.Module]] = {}

#: Modules imported with the registry (they register the built-in poolings).
BUILTIN_MODULES = ("gspdml.pooling.baselines", "gspdml.pooling.gsp")

#: Built-in names whose module failed to import: name -> error text (reported on use).
_UNAVAILABLE: dict[str, str] = {}

T = TypeVar("T", bound=type)


def register_pooling(name: str) -> Callable[[T], T]:
    """Class decorator registering a pooling under ``name`` (case-insensitive)."""
    key = name.strip().lower()
    if not key:
        raise ConfigError("register_pooling: the pooling name must be a non-empty string")

    def decorator(cls: T) -> T:
        existing = POOLINGS.get(key)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(
                f"pooling name {key!r} is already registered to {existing.__module__}.{existing.__qualname__}"
            )
        POOLINGS[key] = cls
        _UNAVAILABLE.pop(key, None)
        return cls

    return decorator


def pooling_arguments(cls: type) -> list[str]:
    """Keyword arguments a pooling class accepts besides ``dim``."""
    accepted = getattr(cls, "accepted_arguments", None)
    if callable(accepted):
        return list(accepted())
    params = inspect.signature(cls.__init__).parameters
    return [
        p.name
        for p in params.values()
        if p.name not in ("self", "dim") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def build_pooling(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the pooling registered as ``name`` for features of dimension ``dim``.

    Raises :class:`ConfigError` for an unknown name (listing the choices) or for keyword
    arguments the pooling does not accept (naming the pooling and its accepted arguments).
    """
    key = str(name).strip().lower()
    if key in _UNAVAILABLE:
        raise ConfigError(f"pooling {key!r} is unavailable: its module failed to import ({_UNAVAILABLE[key]})")
    cls = POOLINGS.get(key)
    if cls is None:
        raise unknown_choice("pooling", name, list(POOLINGS) + list(_UNAVAILABLE))
    accepted = pooling_arguments(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"pooling {key!r} does not accept argument(s) {', '.join(unknown)}; "
            f"accepted arguments: {', '.join(accepted) if accepted else '(none)'}"
        )
    return cls(dim, **kwargs)


def _register_gsp(module) -> None:
    gsp_cls = getattr(module, "GSP", None)
    if gsp_cls is not None and "gsp" not in POOLINGS:
        POOLINGS["gsp"] = gsp_cls


for _module_name in BUILTIN_MODULES:
    try:
        _module = importlib.import_module(_module_name)
    except ImportError as exc:  # a broken module only disables its own names
        if _module_name.endswith(".gsp"):
            for _name in ("gsp",):
                _UNAVAILABLE.setdefault(_name, f"{type(exc).__name__}: {exc}")
        else:
            raise
    else:
        if _module_name.endswith(".gsp"):
            _register_gsp(_module)
