"""Lazy re-exports for package ``__init__`` files (keeps ``import gspdml`` cheap)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """Return a module ``__getattr__`` that imports ``exports[name]`` (a module path) on first use."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
