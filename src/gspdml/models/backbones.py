"""Backbone registry: ``build_backbone(name, pretrained=None, **kwargs)``.

A backbone is an ``nn.Module`` whose forward returns the features *before* global pooling: a map
``(B, C, H, W)`` or a token set ``(B, N, C)``. It has the attributes ``out_channels`` (C) and
``input_kind`` (``"image"`` for image tensors, ``"tokens"`` for integer token ids).

Names are resolved through a lazy table ``name -> (module, factory)``: the module is imported only
when the name is built, so a missing or broken module only affects its own names. A module may
also register factories itself with :func:`register_backbone` (which takes precedence). Names
of the form ``timm:<model>`` build any timm model (see :mod:`gspdml.models.timm_backbone`).

Factories are called as ``factory(pretrained=pretrained, **kwargs)``; ``pretrained`` is always a
local file path or ``None``: nothing is downloaded.
"""
from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, Optional, Union

from torch import nn

from gspdml.errors import ConfigError, unknown_choice

__all__ = ["BACKBONES", "register_backbone", "build_backbone", "backbone_names"]

Factory = Callable[..., nn.Module]

#: name -> a factory, or a lazy ``(module, factory attribute)`` pair resolved on first use.
BACKBONES: dict[str, Union[Factory, tuple[str, str]]] = {
    "bninception": ("gspdml.models.bninception", "bninception"),
    "resnet50": ("gspdml.models.resnet", "resnet50"),
    "resnet20": ("gspdml.models.resnet", "resnet20"),
    "smallcnn": ("gspdml.models.backbones_small", "smallcnn"),
    "token_embedding": ("gspdml.models.backbones_small", "token_embedding"),
}

TIMM_PREFIX = "timm:"


def register_backbone(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(pretrained=None, **kwargs) -> nn.Module`` under ``name``."""
    key = name.strip().lower()
    if not key or key.startswith(TIMM_PREFIX):
        raise ConfigError(f"register_backbone: invalid backbone name {name!r} (empty or using the reserved 'timm:' prefix)")

    def decorator(factory: Factory) -> Factory:
        BACKBONES[key] = factory
        return factory

    return decorator


def backbone_names() -> list[str]:
    """All registered names plus the ``timm:<name>`` pattern."""
    return sorted(BACKBONES) + [f"{TIMM_PREFIX}<timm model name>"]


def _resolve(key: str) -> Factory:
    entry = BACKBONES[key]
    if callable(entry):
        return entry
    module_name, attr = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"backbone {key!r} is unavailable: its module {module_name} failed to import ({type(exc).__name__}: {exc})"
        ) from exc
    entry = BACKBONES.get(key)  # the module may have registered the name itself
    if callable(entry):
        return entry
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"backbone {key!r} is unavailable: {module_name} has no factory {attr!r}")
    BACKBONES[key] = factory
    return factory


def _check_kwargs(key: str, factory: Factory, kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p != "pretrained"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"backbone {key!r} does not accept argument(s) {', '.join(unknown)}; "
            f"accepted arguments: {', '.join(accepted) if accepted else '(none)'}"
        )


def build_backbone(name: str, pretrained: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> nn.Module:
    """Build a backbone by name; ``pretrained`` is a local weights file or ``None``.

    Raises :class:`ConfigError` for unknown names (listing the choices), unaccepted keyword
    arguments, ``pretrained=True`` (nothing is downloaded), and factories that return a module
    without ``out_channels``/``input_kind``.
    """
    if pretrained is True:
        raise ConfigError(
            f"backbone {name!r}: pretrained=True would need a download; gspdml only loads local weight files, "
            "pass the file's path instead"
        )
    if pretrained is False or pretrained == "":
        pretrained = None
    key = str(name).strip()
    if key.lower().startswith(TIMM_PREFIX):
        from gspdml.models.timm_backbone import build_timm_backbone

        model = build_timm_backbone(key[len(TIMM_PREFIX):].strip(), pretrained=pretrained, **kwargs)
    else:
        key = key.lower()
        if key not in BACKBONES:
            raise unknown_choice("backbone", name, backbone_names())
        factory = _resolve(key)
        _check_kwargs(key, factory, kwargs)
        model = factory(pretrained=pretrained, **kwargs)
    for attr in ("out_channels", "input_kind"):
        if not hasattr(model, attr):
            raise ConfigError(f"backbone {name!r} built a {type(model).__name__} without the required attribute {attr!r}")
    if model.input_kind not in ("image", "tokens"):
        raise ConfigError(f"backbone {name!r} has input_kind {model.input_kind!r}; expected 'image' or 'tokens'")
    return model
