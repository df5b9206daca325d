"""Typed training configuration that maps one-to-one onto the YAML files in ``gspdml/configs/``.

A config is a :class:`TrainConfig` with the sections ``data``, ``model``, ``loss`` (with its
``zero_shot`` sub-section), ``optim``, ``train`` and ``eval``, plus the top-level ``name`` and
``output_dir``. Every field has a default, so a YAML file only lists what differs::

    cfg = load_config("cub_ms_gsp", overrides=["loss.name=Triplet", "train.max_steps=100"])
    cfg.optim.lr            # 1e-05
    save_config(cfg, "run/config.yaml")

Unknown keys raise :class:`~gspdml.errors.ConfigError` listing the valid keys of that section;
wrong types raise it naming the key, the value and the expected type. Override values are parsed
as YAML (``train.plot=false`` gives ``False``, ``data.fold=null`` gives ``None``). Every float is
checked finite and in its range (``optim.lr=.nan`` is an error naming the key); a NaN anywhere in
a free-form mapping (``loss.kwargs``, ``model.pooling_kwargs``, ...) is an error too.

:func:`check_learnable` refuses settings with which a loss cannot learn (a pair loss without
positives or negatives in a batch, L_ZS without two class-disjoint halves, more classes per batch
than the training set has); :func:`resolve_precision` turns ``train.precision`` into the autocast
dtype for a device.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from gspdml.errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "ZeroShotConfig",
    "LossConfig",
    "OptimConfig",
    "LoopConfig",
    "EvalConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "config_from_dict",
    "to_dict",
    "apply_overrides",
    "validate_config",
    "find_config",
    "shipped_configs",
    "parse_device",
    "resolve_precision",
    "check_learnable",
    "upgrade_stored_config",
    "OPTIMIZERS",
    "SCHEDULERS",
    "DEVICES",
    "PRECISIONS",
    "FLOAT_RANGES",
    "PAIR_LOSSES",
    "PROXY_LOSSES",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step", "multistep", "plateau")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROJECTIONS = ("auto", "before", "after")
FEATURE_NORMS = ("none", "layernorm")

#: losses that compare samples of a batch with each other: they need positives (two samples of a
#: class) and negatives (two classes) in every batch (XBM: its batch loss during the warm-up)
PAIR_LOSSES = ("c1", "c2", "triplet", "ms", "xbm")
#: losses with one learnable proxy per training class
PROXY_LOSSES = ("pnca", "panchor", "pnca+nir", "panchor+nir", "pnca++")

#: keys that moved: old key -> where the setting lives now
_MOVED_KEYS = {
    "optim.proxy_lr_mult": "loss.kwargs.proxy_lr_mult",
    "train.amp": "train.precision",
}
#: what the replacement of a moved key takes
_MOVED_HINTS = {
    "train.amp": ": auto (fp16 on CUDA, fp32 on the CPU; what amp: true or null did), fp32 (amp: false), bf16 "
                 "(CPU and CUDA) or fp16 (CUDA only)",
}


@dataclass
class DataConfig:
    """Dataset, transforms, folds and batch composition."""

    dataset: str = "cub"
    """Dataset name from ``gspdml.data`` (``cub, cars196, sop, inshop, digits_collage, ...``)."""
    root: str = "data"
    """Folder holding the dataset files as distributed by their authors."""
    image_size: int = 227
    transform: str = "mlrc"
    """Transform kind for ``gspdml.data.build_transform`` (``mlrc``, ``imagenet``, ``small``) or ``none``."""
    normalization: str = "bninception"
    fold: Optional[int] = None
    """MLRC fold (0..num_folds-1): train on the other folds' classes, validate on this one.
    ``None`` trains on the whole train split (conventional protocol)."""
    num_folds: int = 4
    classes_per_batch: int = 8
    samples_per_class: int = 4
    num_workers: int = 4
    train_split: str = "train"
    test_split: str = "test"
    """Split evaluated at the end of training (retrieved against itself, self-match excluded)."""
    gallery_split: Optional[str] = None
    """When set (In-shop: ``gallery`` with ``test_split: query``), ``test_split`` is the query set
    and this split the gallery."""
    val_split: Optional[str] = None
    """Validation split when ``fold`` is null (optional); with a fold, the held-out classes are used."""
    options: dict = field(default_factory=dict)
    """Extra keyword options passed to the dataset builder."""


@dataclass
class ModelConfig:
    """Backbone -> pooling with the projection to ``local_dim`` before or after it -> L2 normalisation."""

    backbone: str = "bninception"
    pretrained: Optional[str] = None
    """Local path to pretrained backbone weights (nothing is downloaded) or ``null``."""
    backbone_kwargs: dict = field(default_factory=dict)
    local_dim: int = 128
    pooling: str = "gsp"
    pooling_kwargs: dict = field(default_factory=dict)
    freeze_bn: bool = True
    """Freeze BN running statistics (affine parameters still train), as MLRC does."""
    projection: str = "auto"
    """Where the projection to ``local_dim`` sits: ``before`` the pooling (1x1 conv without bias on
    the backbone map, then pool: the GSP paper's head), ``after`` it (pool the backbone map, then a
    linear layer: the authors' baseline heads), or ``auto`` (the authors' framework: ``before`` for
    the GSP family, ``after`` for every other pooling)."""
    feature_norm: str = "none"
    """``layernorm``: LayerNorm (no affine parameters) on the pooled backbone features before the
    projection (ProxyNCA++); needs the projection ``after`` the pooling. ``none``: no such norm."""


@dataclass
class ZeroShotConfig:
    """The zero-shot regulariser L_ZS on the GSP prototype marginals (paper Sec. 4.3)."""

    enabled: bool = False
    weight: float = 0.1
    """lambda in (1 - lambda) L_DML + lambda L_ZS."""
    ridge: float = 0.05
    scale: float = 9.5


@dataclass
class LossConfig:
    """DML loss by the paper's name (``C1, C2, Triplet, MS, XBM, PNCA, PAnchor``) and its options."""

    name: str = "MS"
    kwargs: dict = field(default_factory=dict)
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 1e-4
    """Applied to weights only: BN/norm parameters and biases get no weight decay."""
    no_decay_norm_bias: bool = True
    momentum: float = 0.9
    """Used by ``sgd`` only."""
    eps: float = 1e-8
    """Adam / AdamW epsilon (the term added to the root of the second moment); ProxyNCA++ uses 1.0."""
    scheduler: str = "none"
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many steps (any scheduler)."""
    step_size: int = 1000
    """``step`` scheduler: multiply the lr by ``gamma`` every ``step_size`` steps."""
    gamma: float = 0.5
    """The lr factor of ``step``, ``multistep`` and ``plateau`` (``plateau``: < 1)."""
    min_lr_ratio: float = 0.0
    """``cosine`` scheduler: final lr as a fraction of the base lr."""
    milestone_epochs: list = field(default_factory=list)
    """``multistep`` scheduler: multiply the lr by ``gamma`` at the start of each of these epochs."""
    plateau_patience: int = 10
    """``plateau`` scheduler: validations without a better validation MAP@R before the lr is
    multiplied by ``gamma`` (torch's ReduceLROnPlateau ``patience``, mode max)."""
    min_lr: float = 0.0
    """``plateau`` scheduler: no parameter group's lr goes below this."""


@dataclass
class LoopConfig:
    """The training loop: length, validation, early stopping, checkpoints, precision, seed."""

    max_epochs: int = 100
    max_steps: Optional[int] = None
    """Stop after this many optimiser steps (``null``: only ``max_epochs`` limits)."""
    eval_every_steps: Optional[int] = None
    """Validate every N steps; ``null`` validates at the end of every epoch; ``0`` never."""
    patience: Optional[int] = None
    """Early stopping: stop after this many validations without a better validation MAP@R."""
    checkpoint_every_steps: int = 1000
    """Write ``checkpoints/last.pt`` every N steps (``0``: only at the end of training)."""
    save_checkpoints: bool = True
    """``false`` writes no checkpoint at all (cheap programmatic runs)."""
    precision: str = "auto"
    """Compute precision of the forward/backward pass: ``auto`` (fp16 autocast on CUDA, fp32 on
    the CPU), ``fp32`` (no autocast), ``bf16`` (bfloat16 autocast, CPU and CUDA) or ``fp16``
    (float16 autocast with a gradient scaler; CUDA only). See :func:`resolve_precision`."""
    freeze_backbone_epochs: int = 0
    """The backbone gets no updates during the first N epochs (head, pooling and loss train)."""
    pooling_warmup_epochs: int = 0
    """GSP warm-up (the authors' proxy-loss setup): for the first N epochs the pooling outputs GAP
    and its k-center memory is not filled; needs a pooling with a warm-up (``warmup_steps``)."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` (this process's GPU) or ``cuda:N``."""
    grad_clip: Optional[float] = None
    """Clip the global gradient norm to this value (``null``: no clipping)."""
    grad_clip_value: Optional[float] = None
    """Clip every gradient element of the model's parameters to ``[-v, v]`` (``null``: off; the
    loss's parameters, e.g. proxies, are not clipped, as ProxyNCA++). Applied after the fp16
    unscale and after ``grad_clip`` (the norm is measured and clipped first)."""
    divergence_factor: Optional[float] = 1e3
    """Stop (naming the step and the last good checkpoint) when a step's training loss exceeds the
    run's first loss by more than this factor x max(|first loss|, 1) (``null``: no such check; a
    NaN/inf loss always stops)."""
    max_grad_norm: Optional[float] = None
    """Stop when the total gradient norm (before clipping) exceeds this value (``null``: no limit).
    With it or ``grad_clip`` set, a non-finite gradient norm stops too (fp32/bf16)."""
    log_every: int = 50
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower on GPU)."""
    plot: bool = True
    """Write ``curves.png`` in the run folder at the end."""


@dataclass
class EvalConfig:
    """Evaluation after training and during validation."""

    batch_size: int = 64
    recall_ks: list = field(default_factory=lambda: [1, 2, 4, 8])
    test_at_end: bool = True
    """Evaluate the final (best-validation when validating) model on ``data.test_split``."""
    use_best: bool = True
    """Restore the best-validation weights before the final test (when validation ran)."""
    metrics: list = field(default_factory=list)
    """Metrics beyond MAP@R / R-Precision / P@1 / Recall@K: ``nmi`` and ``map_at_<K>`` (the NIR
    paper's NMI and mAP@1000), computed in validation, the final test, ``eval`` and the protocol."""


@dataclass
class TrainConfig:
    """A full training run. Maps one-to-one onto a YAML file."""

    name: str = "run"
    output_dir: Optional[str] = "runs"
    """Runs are written to ``output_dir/name`` (``name_2``... if taken); ``null`` writes no files."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# type checking
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "int", float: "float", str: "str", bool: "bool", dict: "mapping", list: "list"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg)
            except ConfigError:
                continue
        raise _type_error(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads '1e-5' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, tp)
    if tp is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return copy.deepcopy(value)
        raise _type_error(key, value, tp)
    if tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _type_error(key, value, tp)
    raise ConfigError(f"internal: unsupported config type {tp!r} for {key}")  # pragma: no cover


def _type_error(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"config key {key!r}: value {value!r} has the wrong type; expected {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    for k in unknown:
        old = f"{prefix}.{k}" if prefix else k
        if old in _MOVED_KEYS:
            raise ConfigError(f"config key {old!r} was removed; set {_MOVED_KEYS[old]} instead"
                              f"{_MOVED_HINTS.get(old, '')}")
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(f'{prefix}.{k}' if prefix else k) for k in unknown)}; "
            f"valid keys of {where!r} are: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            kwargs[name] = _check_value(key, data[name], tp)
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (YAML-loaded) nested dict."""
    cfg = _build(TrainConfig, data or {}, "")
    validate_config(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as a plain nested dict (YAML/JSON-serialisable)."""
    return copy.deepcopy(dataclasses.asdict(cfg))


def _choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"config key {key!r}: unknown value {value!r}; valid choices are: {', '.join(choices)}")


def parse_device(spec: str, key: str | None = None) -> tuple[str, int | None]:
    """Parse a device spec (one of :data:`DEVICES`) into ``(kind, index)``: ``("cuda", 1)`` for
    ``cuda:1``, ``("cpu", None)`` for ``cpu``. Raises ConfigError naming ``key`` (a config key) when
    given, else the device, for anything else. Whether the device exists is not checked here."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", str(spec).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        where = f"config key {key!r}: unknown value" if key else "unknown device"
        raise ConfigError(f"{where} {spec!r}; valid choices are: {', '.join(DEVICES)}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def validate_config(cfg: TrainConfig) -> None:
    """Check values and ranges that a type alone does not catch (raises ConfigError)."""
    d = cfg.data
    if d.num_folds < 2:
        raise ConfigError(f"config key 'data.num_folds': expected an int >= 2, got {d.num_folds}")
    if d.fold is not None and not 0 <= d.fold < d.num_folds:
        raise ConfigError(
            f"config key 'data.fold': expected null or an int in 0..{d.num_folds - 1}, got {d.fold}"
        )
    for key, val in (
        ("data.classes_per_batch", d.classes_per_batch),
        ("data.samples_per_class", d.samples_per_class),
        ("data.image_size", d.image_size),
        ("model.local_dim", cfg.model.local_dim),
        ("eval.batch_size", cfg.eval.batch_size),
        ("train.log_every", cfg.train.log_every),
    ):
        if val < 1:
            raise ConfigError(f"config key {key!r}: expected a positive int, got {val}")
    if d.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers': expected an int >= 0, got {d.num_workers}")
    _check_floats(cfg)
    o = cfg.optim
    _choice("optim.name", o.name.lower(), OPTIMIZERS)
    _choice("optim.scheduler", o.scheduler.lower(), SCHEDULERS)
    if o.warmup_steps < 0:
        raise ConfigError(f"config key 'optim.warmup_steps': expected an int >= 0, got {o.warmup_steps}")
    if o.step_size < 1:
        raise ConfigError(f"config key 'optim.step_size': expected an int >= 1, got {o.step_size}")
    milestones = o.milestone_epochs
    if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"config key 'optim.milestone_epochs': expected increasing ints >= 1, got {milestones}")
    if o.scheduler.lower() == "multistep" and not milestones:
        raise ConfigError("optim.scheduler=multistep needs optim.milestone_epochs (e.g. [140, 230])")
    if o.plateau_patience < 0:
        raise ConfigError(f"config key 'optim.plateau_patience': expected an int >= 0, got {o.plateau_patience}")
    if o.scheduler.lower() == "plateau":
        if o.gamma >= 1:
            raise ConfigError(f"config key 'optim.gamma': optim.scheduler=plateau multiplies the lr by gamma and "
                              f"needs gamma < 1, got {o.gamma!r}")
        if o.warmup_steps:
            raise ConfigError(f"optim.scheduler=plateau takes no optim.warmup_steps (got {o.warmup_steps}): the "
                              "plateau schedule changes the lr only after validations; use "
                              "train.freeze_backbone_epochs for a warm-up")
        if cfg.train.eval_every_steps == 0:
            raise ConfigError("optim.scheduler=plateau steps on the validation MAP@R but train.eval_every_steps=0 "
                              "turns validation off; validate every epoch (null) or every N steps, with data.fold "
                              "or data.val_split set")
    for m in cfg.eval.metrics:
        if not isinstance(m, str) or not re.fullmatch(r"nmi|map_at_[1-9]\d*", m):
            raise ConfigError(f"config key 'eval.metrics': unknown metric {m!r}; valid are 'nmi' and 'map_at_<K>' "
                              "(e.g. map_at_1000)")
    t = cfg.train
    parse_device(t.device, "train.device")
    _choice("train.precision", str(t.precision).lower(), PRECISIONS)
    if parse_device(t.device)[0] == "cpu":
        _check_precision_device(str(t.precision).lower(), "cpu")  # now, not when training starts
    for key, val in (("train.freeze_backbone_epochs", t.freeze_backbone_epochs),
                     ("train.pooling_warmup_epochs", t.pooling_warmup_epochs)):
        if val < 0:
            raise ConfigError(f"config key {key!r}: expected an int >= 0, got {val}")
    _choice("model.projection", cfg.model.projection.lower(), PROJECTIONS)
    _choice("model.feature_norm", cfg.model.feature_norm.lower(), FEATURE_NORMS)
    if cfg.model.feature_norm.lower() != "none" and cfg.model.projection.lower() == "before":
        raise ConfigError("config key 'model.feature_norm': a norm on the pooled backbone features needs "
                          "model.projection 'after' or 'auto' (with a non-GSP pooling), got 'before'")
    if t.max_epochs < 1:
        raise ConfigError(f"config key 'train.max_epochs': expected an int >= 1, got {t.max_epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"config key 'train.max_steps': expected null or an int >= 1, got {t.max_steps}")
    if t.eval_every_steps is not None and t.eval_every_steps < 0:
        raise ConfigError(f"config key 'train.eval_every_steps': expected null or an int >= 0, got {t.eval_every_steps}")
    if t.patience is not None and t.patience < 1:
        raise ConfigError(f"config key 'train.patience': expected null or an int >= 1, got {t.patience}")
    if t.checkpoint_every_steps < 0:
        raise ConfigError(
            f"config key 'train.checkpoint_every_steps': expected an int >= 0, got {t.checkpoint_every_steps}"
        )
    ks = cfg.eval.recall_ks
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"config key 'eval.recall_ks': expected a non-empty list of positive ints, got {ks}")


#: ranges of the float keys: key -> (low, low included, high, high included); every other typed
#: float (a key added later included) must be finite, a float inside a mapping must not be NaN
FLOAT_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "optim.lr": (0.0, False, math.inf, False),
    "optim.weight_decay": (0.0, True, math.inf, False),
    "optim.momentum": (0.0, True, 1.0, False),
    "optim.gamma": (0.0, False, math.inf, False),
    "optim.min_lr_ratio": (0.0, True, 1.0, True),
    "optim.eps": (0.0, False, math.inf, False),
    "optim.min_lr": (0.0, True, math.inf, False),
    "train.grad_clip_value": (0.0, False, math.inf, False),
    "train.grad_clip": (0.0, False, math.inf, False),
    "train.divergence_factor": (1.0, False, math.inf, False),
    "train.max_grad_norm": (0.0, False, math.inf, False),
    "loss.zero_shot.weight": (0.0, True, 1.0, True),
    "loss.zero_shot.ridge": (0.0, False, math.inf, False),
    "loss.zero_shot.scale": (0.0, False, math.inf, False),
}


def _range_text(low: float, low_in: bool, high: float, high_in: bool) -> str:
    if math.isinf(high):
        if low == 0 and not low_in:
            return "a positive finite float"
        return f"a finite float {'>=' if low_in else '>'} {low:g}"
    return f"a float in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _float_fields(obj: Any, prefix: str = ""):
    """``(key, value)`` of every float field of the config dataclass ``obj`` (nested sections too)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _float_fields(value, key)
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, (dict, list)):
            yield from _nested_floats(value, key)


def _nested_floats(value: Any, key: str):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nested_floats(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _nested_floats(v, f"{key}[{i}]")
    elif isinstance(value, float):
        yield key, value


def _check_floats(cfg: TrainConfig) -> None:
    """Every typed float finite and in its range (:data:`FLOAT_RANGES`); no NaN in any mapping."""
    for key, value in _float_fields(cfg):
        rng = FLOAT_RANGES.get(key)
        if rng is not None:
            low, low_in, high, high_in = rng
            ok = math.isfinite(value) and (value >= low if low_in else value > low) and (
                value <= high if high_in else value < high)
            if not ok:
                null = "null or " if _is_optional(key) else ""
                raise ConfigError(f"config key {key!r}: expected {null}{_range_text(*rng)}, got {value!r}")
        elif _is_typed_float(key):
            if not math.isfinite(value):
                raise ConfigError(f"config key {key!r}: expected a finite float, got {value!r}")
        elif math.isnan(value):  # inside a free-form mapping: the builder checks ranges, NaN is never valid
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")


def _field_type(key: str) -> Any:
    """The annotated type of a typed config key (``optim.lr``), or None for a key inside a mapping."""
    cls: Any = TrainConfig
    tp: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = cls = hints[part]
    return tp


def _is_typed_float(key: str) -> bool:
    tp = _field_type(key)
    return tp is float or (typing.get_origin(tp) in (Union, types.UnionType) and float in typing.get_args(tp))


def _is_optional(key: str) -> bool:
    tp = _field_type(key)
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def resolve_precision(precision: str, device_type: Any):
    """The autocast dtype of ``train.precision`` on a device type (``"cpu"``, ``"cuda"`` or a
    ``torch.device``): ``None`` means fp32 (no autocast).

    ``auto``: float16 on CUDA, fp32 elsewhere; ``fp32``: None; ``bf16``: bfloat16 (CPU and CUDA);
    ``fp16``: float16 on CUDA, a ConfigError elsewhere (float16 autocast needs CUDA; bf16 works on
    the CPU). Loss scaling (a GradScaler) is needed only for float16.
    """
    import torch

    kind = str(getattr(device_type, "type", device_type)).split(":")[0].lower()
    value = str(precision).lower()
    _choice("train.precision", value, PRECISIONS)
    if value == "fp32":
        return None
    if value == "bf16":
        return torch.bfloat16
    if value == "auto":
        return torch.float16 if kind == "cuda" else None
    _check_precision_device(value, kind)
    return torch.float16


def _check_precision_device(precision: str, kind: str) -> None:
    if precision == "fp16" and kind != "cuda":
        raise ConfigError(
            f"config key 'train.precision': fp16 needs CUDA (float16 autocast with loss scaling) and the "
            f"device is {kind}; use train.precision=bf16 (bfloat16 autocast, works on the CPU) or fp32"
        )


def check_learnable(cfg: TrainConfig, num_classes: int | None = None) -> None:
    """Refuse a run whose loss cannot learn with its batches (ConfigError naming the setting).

    Without ``num_classes`` only the config is looked at: a pair loss (:data:`PAIR_LOSSES`) needs
    positives (``data.samples_per_class >= 2``) and negatives (``data.classes_per_batch >= 2``);
    L_ZS (``loss.zero_shot.enabled``) splits every batch into two class-disjoint halves, which
    needs ``data.classes_per_batch >= 2``. With ``num_classes`` (the training set's class count)
    also: at least 2 training classes, and no more classes per batch than exist (a proxy loss then
    has more classes in a batch than proxies).
    """
    d = cfg.data
    loss = str(cfg.loss.name)
    name = loss.lower()
    if name in PAIR_LOSSES:
        if d.samples_per_class < 2:
            raise ConfigError(
                f"data.samples_per_class={d.samples_per_class}: loss {loss} compares pairs of samples and needs "
                "at least 2 samples of a class in a batch (positives); with 1 its loss is 0 and nothing is "
                "learned. Set data.samples_per_class >= 2"
            )
        if d.classes_per_batch < 2:
            raise ConfigError(
                f"data.classes_per_batch={d.classes_per_batch}: loss {loss} compares pairs of samples and needs "
                "at least 2 classes in a batch (negatives); with 1 its loss is 0 and nothing is learned. "
                "Set data.classes_per_batch >= 2"
            )
    if cfg.loss.zero_shot.enabled and d.classes_per_batch < 2:
        raise ConfigError(
            f"data.classes_per_batch={d.classes_per_batch}: loss.zero_shot.enabled (L_ZS) splits every batch "
            "into two class-disjoint halves and needs data.classes_per_batch >= 2"
        )
    if num_classes is None:
        return
    if num_classes < 2:
        raise ConfigError(
            f"the training set has {num_classes} class; metric learning needs at least 2 training classes "
            f"(check data.dataset, data.train_split and data.fold)"
        )
    if d.classes_per_batch > num_classes:
        kind = f" (proxy loss {loss}: one proxy per training class)" if name in PROXY_LOSSES else ""
        raise ConfigError(
            f"data.classes_per_batch={d.classes_per_batch} but the training set has only {num_classes} "
            f"classes{kind}; set data.classes_per_batch <= {num_classes} (batches hold distinct classes)"
        )


def upgrade_stored_config(data: dict | None) -> dict:
    """A copy of a config dict stored by an older gspdml (a checkpoint's ``config``, a run folder's
    ``config.yaml``) with ``train.amp`` mapped to ``train.precision``: ``false`` -> ``fp32``;
    ``true`` or ``null`` -> ``auto`` (fp16 on CUDA; on the CPU ``amp`` was ignored, i.e. fp32,
    which is what ``auto`` does there). For stored configs only: a user's config that sets
    ``train.amp`` is an error naming ``train.precision``. A stored model section without
    ``projection`` was written before that key existed, when every head projected first: it gets
    ``projection: before``, so its checkpoint loads into the model it was trained with; its
    ``gmp+gsp`` / ``gem+gsp`` (then gspdml's own definitions, now the authors') become
    ``gmp+gsp-projected`` / ``gem+gsp-projected``, which keep those definitions."""
    out = copy.deepcopy(data) if data else {}
    train = out.get("train")
    if isinstance(train, dict) and "amp" in train:
        amp = train.pop("amp")
        train.setdefault("precision", "fp32" if amp is False else "auto")
    model = out.get("model")
    if isinstance(model, dict) and "projection" not in model:
        model["projection"] = "before"
        pooling = str(model.get("pooling", "")).strip().lower()
        if pooling in ("gmp+gsp", "gem+gsp"):
            model["pooling"] = f"{pooling}-projected"
    return out


# ---------------------------------------------------------------------------------------------
# overrides, load, save
# ---------------------------------------------------------------------------------------------


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like 'section.key=value' (e.g. 'loss.name=MS')")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key; expected 'section.key=value'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides) -> dict:
    """Apply ``["a.b=c", ...]`` (values parsed as YAML) to a nested dict; returns a new dict.

    Keys are checked against the dataclasses when the result is built, so a typo such as
    ``optim.learning_rate=1`` reports the valid keys of ``optim``.
    """
    out = copy.deepcopy(data) if data else {}
    for text in overrides or ():
        path, value = _parse_override(str(text))
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section (its value is {nxt!r})")
            node = nxt
        node[path[-1]] = value
    return out


#: the configs that ship inside the package (``gspdml configs`` lists them)
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """``name -> path`` of every config shipped with gspdml (``cub_ms_gsp``, ``digits_collage_gsp``, ...)."""
    return {p.stem: p for p in sorted(SHIPPED_CONFIGS.glob("*.yaml"))}


def find_config(name_or_path: str | os.PathLike) -> Path:
    """Resolve ``-c NAME_OR_PATH``: an existing file is taken as it is; otherwise a shipped config
    of that name (``digits_collage_gsp`` or ``digits_collage_gsp.yaml``). ConfigError when neither
    exists, listing close shipped names."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.exists():
        raise ConfigError(f"config {str(p)!r} is not a file")
    shipped = shipped_configs()
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and stem in shipped:
        return shipped[stem]
    import difflib

    close = difflib.get_close_matches(stem, list(shipped), n=5, cutoff=0.5)
    hint = f"; shipped configs with a similar name: {', '.join(close)}" if close else ""
    raise ConfigError(
        f"config {str(name_or_path)!r} does not exist: it is neither a file nor a shipped config "
        f"name{hint} (`gspdml configs` lists the shipped ones)"
    )


def load_config(path: str | os.PathLike | None = None, overrides=None) -> TrainConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    ``path`` is a file or the name of a shipped config (see :func:`find_config`)."""
    data: dict = {}
    if path is not None:
        p = find_config(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must contain a mapping at top level, got {type(loaded).__name__}")
        data = loaded or {}
        try:
            config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    return config_from_dict(apply_overrides(data, overrides))


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the full resolved config as YAML (every key, defaults included)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return p


def replace(cfg: TrainConfig, overrides) -> TrainConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (validated)."""
    return config_from_dict(apply_overrides(to_dict(cfg), overrides))
