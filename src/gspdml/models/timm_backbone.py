"""Any timm model as a backbone: ``build_backbone("timm:<model name>", pretrained=None, **kwargs)``.

The wrapper returns timm's ``forward_features`` output, i.e. the features before global pooling:
CNNs give a map ``(B, C, H, W)`` (NHWC outputs such as Swin's are permuted to NCHW), ViT-style
models give the patch-token set ``(B, N, C)`` with the class/register tokens
(``num_prefix_tokens``) removed, so GSP pools the patch tokens.

Nothing is downloaded: the model is created with ``pretrained=False`` unless ``pretrained`` is a
local weights file, which is then loaded through timm's own loader (``pretrained_cfg_overlay=
{"file": path}``), so timm's checkpoint filters (e.g. position-embedding resizing for another
``img_size``) apply and the classifier is dropped. Extra keyword arguments go to
``timm.create_model`` (e.g. ``img_size=64`` for a ViT at a small resolution).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Optional, Union

from torch import Tensor, nn

from gspdml.errors import CheckpointError, ConfigError
from gspdml.models._weights import require_file

__all__ = ["TimmBackbone", "build_timm_backbone"]


class TimmBackbone(nn.Module):
    """Wraps a timm model; forward gives its pre-pooling features (map or patch tokens)."""

    input_kind = "image"

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.output_fmt = str(getattr(model, "output_fmt", "NCHW"))
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.model.forward_features(x)
        if isinstance(feats, (list, tuple)):
            feats = feats[-1]
        if feats.dim() == 4:
            if self.output_fmt.upper() == "NHWC" or (feats.shape[1] != self.out_channels and feats.shape[-1] == self.out_channels):
                feats = feats.permute(0, 3, 1, 2)
            return feats
        if feats.dim() == 3:
            return feats[:, self.num_prefix_tokens:] if self.num_prefix_tokens else feats
        raise ConfigError(
            f"timm:{self.name}: forward_features returned a tensor of shape {tuple(feats.shape)}; "
            "expected a map (B, C, H, W) or tokens (B, N, C)"
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, num_prefix_tokens={self.num_prefix_tokens}"


def build_timm_backbone(name: str, pretrained: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> TimmBackbone:
    """Create ``timm.create_model(name, num_classes=0, **kwargs)``; load ``pretrained`` from a local file."""
    import timm

    if not name:
        raise ConfigError("timm backbone: empty model name; use 'timm:<model name>', e.g. 'timm:resnet18'")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"unknown timm model {name!r}{hint} (list them with python -c \"import timm; print(timm.list_models('*vit*'))\")"
        )
    if pretrained is True:
        raise ConfigError(f"timm:{name}: pretrained=True would download weights; pass a local weights file path instead")
    for forbidden in ("pretrained", "pretrained_cfg_overlay"):
        if forbidden in kwargs:
            raise ConfigError(f"timm:{name}: give weights through the backbone's 'pretrained' path, not {forbidden!r} in kwargs")
    kwargs.setdefault("num_classes", 0)
    try:
        if pretrained:
            path = require_file(pretrained, f"timm:{name}")
            try:
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
            except (RuntimeError, KeyError) as exc:
                raise CheckpointError(f"timm:{name}: cannot load weights {path!r}: {exc}") from exc
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm:{name}: invalid keyword arguments {sorted(kwargs)} for timm.create_model: {exc}") from exc
    return TimmBackbone(model, name)
