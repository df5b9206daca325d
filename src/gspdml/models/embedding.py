"""The embedding model: backbone -> local projection -> pooling -> L2 normalisation.

``EmbeddingModel`` follows the GSP paper (Sec. 4.4): the backbone's feature map before global
pooling is projected to the local embedding size (default 128) by a 1x1 convolution without bias
(token sets: the same projection as a bias-free linear layer over the channel dimension), pooled
by any registered pooling (GSP, GAP, ...) and L2-normalised.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import ConfigError, InputError
from gspdml.models.backbones import build_backbone
from gspdml.models.batchnorm import freeze_batchnorm
from gspdml.pooling import build_pooling

__all__ = ["EmbeddingModel", "build_model", "MODEL_CONFIG_FIELDS"]

MODEL_CONFIG_FIELDS = ("backbone", "pretrained", "backbone_kwargs", "local_dim", "pooling", "pooling_kwargs", "freeze_bn")

#: Parameter names (last component) that never get weight decay besides norms, biases and 1-D params.
NO_DECAY_NAMES = ("prototypes",)


class EmbeddingModel(nn.Module):
    """Backbone -> 1x1 conv (no bias) to ``local_dim`` -> pooling -> L2-normalised embedding.

    Args:
        backbone: a backbone module (with ``out_channels``) or a registered backbone name.
        local_dim: local embedding size D (output size of the model).
        pooling: a registered pooling name (``gsp``, ``gap``, ...) or a ready pooling module.
        pooling_kwargs: keyword arguments for the pooling (e.g. ``{"mu": 0.3, "eps": 5.0}``).
        freeze_bn: freeze the backbone's BatchNorm statistics (affine parameters still train).
        backbone_kwargs: keyword arguments for ``build_backbone`` when ``backbone`` is a name.
        pretrained: local weights file for a backbone given by name.
    """

    def __init__(
        self,
        backbone: Union[nn.Module, str],
        local_dim: int = 128,
        pooling: Union[str, nn.Module] = "gsp",
        pooling_kwargs: Optional[Mapping[str, Any]] = None,
        freeze_bn: bool = False,
        backbone_kwargs: Optional[Mapping[str, Any]] = None,
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, **dict(backbone_kwargs or {}))
        elif pretrained is not None or backbone_kwargs:
            raise ConfigError("EmbeddingModel: 'pretrained'/'backbone_kwargs' only apply when the backbone is given by name")
        if not hasattr(backbone, "out_channels"):
            raise ConfigError(f"EmbeddingModel: backbone {type(backbone).__name__} has no 'out_channels' attribute")
        if not isinstance(local_dim, int) or local_dim <= 0:
            raise ConfigError(f"EmbeddingModel: local_dim must be a positive int, got {local_dim!r}")
        self.backbone = backbone
        self.local_dim = local_dim
        self.local = nn.Conv2d(int(backbone.out_channels), local_dim, kernel_size=1, bias=False)
        if isinstance(pooling, str):
            self.pooling_name = pooling.strip().lower()
            pooling = build_pooling(pooling, local_dim, **dict(pooling_kwargs or {}))
        else:
            if pooling_kwargs:
                raise ConfigError("EmbeddingModel: pooling_kwargs only apply when the pooling is given by name")
            self.pooling_name = type(pooling).__name__
        self.pooling = pooling
        self.freeze_bn = bool(freeze_bn)
        if self.freeze_bn:
            freeze_batchnorm(self.backbone)

    @property
    def input_kind(self) -> str:
        return getattr(self.backbone, "input_kind", "image")

    def local_features(self, x: Tensor) -> Tensor:
        """Backbone features projected to ``local_dim``: ``(B, D, H, W)`` or ``(B, N, D)``."""
        feats = self.backbone(x)
        if feats.dim() == 4:
            return self.local(feats)
        if feats.dim() == 3:
            return F.linear(feats, self.local.weight.flatten(1))
        raise InputError(
            f"backbone {type(self.backbone).__name__} returned features of shape {tuple(feats.shape)}; "
            "expected a map (B, C, H, W) or a token set (B, N, C)"
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, return_details: bool = False):
        """Embeddings ``(B, local_dim)`` (unit norm), or ``(emb, details)`` with the pooling's details."""
        local = self.local_features(x)
        pooled, details = self.pooling(local, mask=mask, return_details=True)
        emb = F.normalize(pooled, p=2, dim=-1)
        return (emb, details) if return_details else emb

    def param_groups(self, weight_decay: float = 0.0) -> list[dict]:
        """Split the trainable parameters into weight-decay and no-decay groups.

        No weight decay on: normalisation layers (BatchNorm/LayerNorm/GroupNorm ...), biases, any
        parameter with at most one dimension (e.g. GeM's ``p``, scalars) and the GSP prototypes
        (parameters named ``prototypes``: they are normalised by ``max(1, ||w||)`` in the cost,
        so decay would drag them into the region where their norm changes the transport; like
        proxies they get no decay). Everything else (conv/linear weights, attention score
        networks) decays. Returns ``[{"name", "params", "weight_decay", "lr_mult"}, ...]`` with
        empty groups omitted.
        """
        norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
        decay, no_decay = [], []
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                if isinstance(module, norm_types) or pname == "bias" or param.ndim <= 1 or pname in NO_DECAY_NAMES:
                    no_decay.append(param)
                else:
                    decay.append(param)
        groups = [
            {"name": "decay", "params": decay, "weight_decay": float(weight_decay), "lr_mult": 1.0},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        ]
        return [g for g in groups if g["params"]]

    def extra_repr(self) -> str:
        return f"local_dim={self.local_dim}, pooling={self.pooling_name!r}, freeze_bn={self.freeze_bn}"


def build_model(cfg: Any = None, **kwargs: Any) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` from a ``ModelConfig``-like object and/or keywords.

    Recognised fields: ``backbone`` (name, default ``"bninception"``), ``pretrained`` (local
    path), ``backbone_kwargs``, ``local_dim`` (128), ``pooling`` (``"gsp"``), ``pooling_kwargs``,
    ``freeze_bn``. Keywords override the object's attributes. Unknown keywords raise
    :class:`ConfigError` listing the valid ones.
    """
    unknown = sorted(set(kwargs) - set(MODEL_CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"build_model: unknown argument(s) {', '.join(unknown)}; valid: {', '.join(MODEL_CONFIG_FIELDS)}")
    values: dict[str, Any] = {}
    if cfg is not None:
        if isinstance(cfg, Mapping):
            bad = sorted(set(cfg) - set(MODEL_CONFIG_FIELDS))
            if bad:
                raise ConfigError(f"build_model: unknown model config key(s) {', '.join(bad)}; valid: {', '.join(MODEL_CONFIG_FIELDS)}")
            values.update(cfg)
        else:
            for field in MODEL_CONFIG_FIELDS:
                if hasattr(cfg, field):
                    values[field] = getattr(cfg, field)
    values.update(kwargs)
    return EmbeddingModel(
        backbone=values.get("backbone", "bninception"),
        local_dim=int(values.get("local_dim", 128)),
        pooling=values.get("pooling", "gsp"),
        pooling_kwargs=values.get("pooling_kwargs") or None,
        freeze_bn=bool(values.get("freeze_bn", False)),
        backbone_kwargs=values.get("backbone_kwargs") or None,
        pretrained=values.get("pretrained") or None,
    )
