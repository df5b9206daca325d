"""The embedding model: backbone -> pooling head (projection to ``local_dim`` before or after the
pooling) -> L2 normalisation.

Two placements of the bias-free projection to the local embedding size (default 128), as in the
GSP authors' TensorFlow framework (``tensorflow/framework/layers/pooling/``):

- ``before`` (the GSP family; GSP paper Sec. 4.4, the TF ``GeneralizedSumPooling`` layer's 1x1
  ``feature_transform`` conv without bias): 1x1 conv on the backbone map (token sets: the same
  matrix as a linear layer over the channel dimension), then the pooling on ``local_dim`` channels.
- ``after`` (the authors' baseline heads ``GlobalPooling``, ``GMeanP``, ``DeLF``, ...): the pooling
  on the raw backbone map (built for the backbone's channel count), an optional LayerNorm without
  affine parameters (ProxyNCA++), then a linear layer without bias (the TF ``Dense(use_bias=False)``
  ``feature_transform``).
- ``auto``: ``before`` when the pooling class says ``projects_first = True`` (GSP and its
  combinations), ``after`` otherwise (every other pooling, also registered user poolings).

GMP+GSP and GeM+GSP (``uses_raw_features = True``) need both the raw map and the projection
(the TF layer's ``augment_max_pool`` / ``use_gemp``): they receive the raw features and borrow
this model's projection matrix (``forward_raw``). The weights keep PyTorch's default
initialisation in both placements (the TF layers use glorot-uniform).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.config import FEATURE_NORMS, PROJECTIONS
from gspdml.errors import ConfigError, InputError
from gspdml.models.backbones import build_backbone
from gspdml.models.batchnorm import freeze_batchnorm
from gspdml.pooling import POOLINGS, build_pooling

__all__ = ["EmbeddingModel", "build_model", "MODEL_CONFIG_FIELDS", "resolve_projection"]

MODEL_CONFIG_FIELDS = ("backbone", "pretrained", "backbone_kwargs", "local_dim", "pooling", "pooling_kwargs",
                       "freeze_bn", "projection", "feature_norm")

#: Parameter names (last component) that never get weight decay besides norms, biases and 1-D params.
NO_DECAY_NAMES = ("prototypes",)


def resolve_projection(projection: str, pooling: Any) -> str:
    """``before`` or ``after``: where the projection sits for ``pooling`` (a pooling class, module or
    registered name). ``auto`` asks the pooling's ``projects_first`` attribute (False when absent)."""
    choice = str(projection).strip().lower()
    if choice not in PROJECTIONS:
        raise ConfigError(f"EmbeddingModel: projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
    if choice != "auto":
        return choice
    if isinstance(pooling, str):
        pooling = POOLINGS.get(pooling)
    return "before" if getattr(pooling, "projects_first", False) else "after"


class EmbeddingModel(nn.Module):
    """Backbone -> pooling head with a bias-free projection to ``local_dim`` -> L2-normalised embedding.

    ``projection="before"``: 1x1 conv (``local``, a ``Conv2d`` without bias) then the pooling on
    ``local_dim`` channels. ``projection="after"``: the pooling on the backbone's ``out_channels``,
    optional ``feature_norm="layernorm"`` (LayerNorm without affine parameters), then ``local``, a
    ``Linear`` without bias (as the authors' TF ``Dense(use_bias=False)``). ``"auto"``: ``before``
    for poolings whose class has ``projects_first = True`` (GSP family), ``after`` otherwise. See
    the module docstring for the authors' sources. ``details`` (``return_details=True``) are the
    pooling's, for either placement (weights over the backbone map's positions).

    Args:
        backbone: a backbone module (with ``out_channels``) or a registered backbone name.
        local_dim: local embedding size D (output size of the model).
        pooling: a registered pooling name (``gsp``, ``gap``, ...) or a ready pooling module (built
            for ``local_dim`` channels with the projection before it, for ``out_channels`` after).
        pooling_kwargs: keyword arguments for the pooling (e.g. ``{"mu": 0.3, "eps": 5.0}``).
        freeze_bn: freeze the backbone's BatchNorm statistics (affine parameters still train).
        backbone_kwargs: keyword arguments for ``build_backbone`` when ``backbone`` is a name.
        pretrained: local weights file for a backbone given by name.
        projection: ``auto`` | ``before`` | ``after``.
        feature_norm: ``none`` | ``layernorm`` (needs the projection after the pooling).
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
        projection: str = "auto",
        feature_norm: str = "none",
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
        channels = int(backbone.out_channels)
        if not isinstance(pooling, (str, nn.Module)):
            raise ConfigError(f"EmbeddingModel: pooling must be a registered name or a module, got {type(pooling).__name__}")
        if not isinstance(pooling, str) and pooling_kwargs:
            raise ConfigError("EmbeddingModel: pooling_kwargs only apply when the pooling is given by name")
        self.pooling_name = pooling.strip().lower() if isinstance(pooling, str) else type(pooling).__name__
        self.projection = resolve_projection(projection, pooling)
        norm = str(feature_norm).strip().lower()
        if norm not in FEATURE_NORMS:
            raise ConfigError(f"EmbeddingModel: feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {feature_norm!r}")
        cls = POOLINGS.get(pooling) if isinstance(pooling, str) else pooling
        self.raw_head = bool(getattr(cls, "uses_raw_features", False))
        if self.raw_head and self.projection == "after":
            raise ConfigError(
                f"EmbeddingModel: pooling {self.pooling_name!r} combines the raw backbone map with its own "
                "projection (GSP on the projected map); it needs projection 'before' or 'auto', got 'after'"
            )
        if norm != "none" and self.projection == "before":
            how = "resolves to 'before' for" if str(projection).strip().lower() == "auto" else "is 'before' with"
            raise ConfigError(
                f"EmbeddingModel: feature_norm {norm!r} normalises the pooled backbone features before the "
                f"projection; it needs projection 'after', but projection {how} pooling {self.pooling_name!r}"
            )
        self.feature_norm = norm
        if self.projection == "before":
            self.local = nn.Conv2d(channels, local_dim, kernel_size=1, bias=False)
            pool_dim = local_dim
        else:
            self.local = nn.Linear(channels, local_dim, bias=False)
            pool_dim = channels
        self.norm = nn.LayerNorm(channels, elementwise_affine=False) if norm == "layernorm" else None
        if isinstance(pooling, str):
            pooling = build_pooling(pooling, pool_dim, **dict(pooling_kwargs or {}))
        elif getattr(pooling, "dim", pool_dim) != pool_dim:
            where = "local_dim" if self.projection == "before" else "the backbone's out_channels"
            raise ConfigError(
                f"EmbeddingModel: the pooling module {self.pooling_name} has dim={pooling.dim}, but with the "
                f"projection {self.projection} the pooling gets {where} = {pool_dim} channels"
            )
        self.pooling = pooling
        self.freeze_bn = bool(freeze_bn)
        if self.freeze_bn:
            freeze_batchnorm(self.backbone)

    @property
    def input_kind(self) -> str:
        return getattr(self.backbone, "input_kind", "image")

    def backbone_features(self, x: Tensor) -> Tensor:
        """The backbone's output, checked: a map ``(B, C, H, W)`` or a token set ``(B, N, C)``."""
        feats = self.backbone(x)
        if feats.dim() not in (3, 4):
            raise InputError(
                f"backbone {type(self.backbone).__name__} returned features of shape {tuple(feats.shape)}; "
                "expected a map (B, C, H, W) or a token set (B, N, C)"
            )
        return feats

    def project(self, feats: Tensor) -> Tensor:
        """Apply the projection to ``local_dim``: to a map ``(B, C, H, W)`` (1x1 conv), a token set
        ``(B, N, C)`` or pooled vectors ``(B, C)`` (linear over the last dimension)."""
        if feats.dim() == 4 and isinstance(self.local, nn.Conv2d):
            return self.local(feats)
        if feats.dim() == 4:
            return F.conv2d(feats, self.local.weight[:, :, None, None])
        return F.linear(feats, self.local.weight.flatten(1))

    def local_features(self, x: Tensor) -> Tensor:
        """Backbone features projected to ``local_dim``: ``(B, D, H, W)`` or ``(B, N, D)``."""
        return self.project(self.backbone_features(x))

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, return_details: bool = False):
        """Embeddings ``(B, local_dim)`` (unit norm), or ``(emb, details)`` with the pooling's details."""
        feats = self.backbone_features(x)
        if self.raw_head:
            pooled, details = self.pooling.forward_raw(feats, self.local.weight.flatten(1), mask=mask,
                                                       return_details=True)
        elif self.projection == "before":
            pooled, details = self.pooling(self.project(feats), mask=mask, return_details=True)
        else:
            pooled, details = self.pooling(feats, mask=mask, return_details=True)
            if self.norm is not None:
                pooled = self.norm(pooled)
            pooled = self.local(pooled)
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
        return (f"local_dim={self.local_dim}, pooling={self.pooling_name!r}, projection={self.projection!r}, "
                f"feature_norm={self.feature_norm!r}, freeze_bn={self.freeze_bn}")


def build_model(cfg: Any = None, **kwargs: Any) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` from a ``ModelConfig``-like object and/or keywords.

    Recognised fields: ``backbone`` (name, default ``"bninception"``), ``pretrained`` (local
    path), ``backbone_kwargs``, ``local_dim`` (128), ``pooling`` (``"gsp"``), ``pooling_kwargs``,
    ``freeze_bn``, ``projection`` (``"auto"``), ``feature_norm`` (``"none"``). Keywords override the object's attributes. Unknown keywords raise
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
        projection=values.get("projection") or "auto",
        feature_norm=values.get("feature_norm") or "none",
    )
