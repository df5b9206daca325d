"""Backbone registry: ``BACKBONES`` and ``build_backbone(name, pretrained=None, **kwargs)``.

A backbone is an ``nn.Module`` whose forward returns the features *before* global pooling: a map
``(B, C, H, W)`` or a token set ``(B, N, C)``. It has the attributes ``out_channels`` (C) and
``input_kind`` (``"image"`` for image tensors, ``"tokens"`` for integer token ids).

Factories are registered with ``@BACKBONES.register("name")`` and called as
``factory(pretrained=pretrained, **kwargs)``; ``pretrained`` is always a local file path or
``None``: nothing is downloaded. The built-in backbones register themselves when this module is
imported. Names of the form ``timm:<model>`` (a reserved prefix) build any timm model (see
:mod:`gspdml.models.timm_backbone`).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from torch import nn

from gspdml.errors import ConfigError, unknown_choice
from gspdml.registry import Registry

__all__ = ["BACKBONES", "build_backbone", "TIMM_PREFIX"]

#: name -> factory ``(pretrained=None, **kwargs) -> nn.Module``.
BACKBONES = Registry("backbone", skip_args=("pretrained",))

TIMM_PREFIX = "timm:"


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
        if key not in BACKBONES:
            raise unknown_choice("backbone", name, [*BACKBONES.names(), f"{TIMM_PREFIX}<timm model name>"])
        BACKBONES.check(key, kwargs)
        model = BACKBONES.get(key)(pretrained=pretrained, **kwargs)
    for attr in ("out_channels", "input_kind"):
        if not hasattr(model, attr):
            raise ConfigError(f"backbone {name!r} built a {type(model).__name__} without the required attribute {attr!r}")
    if model.input_kind not in ("image", "tokens"):
        raise ConfigError(f"backbone {name!r} has input_kind {model.input_kind!r}; expected 'image' or 'tokens'")
    return model


# The built-in backbones register themselves on import (kept last: they import BACKBONES).
import gspdml.models.backbones_small  # noqa: E402,F401
import gspdml.models.bninception  # noqa: E402,F401
import gspdml.models.resnet  # noqa: E402,F401
