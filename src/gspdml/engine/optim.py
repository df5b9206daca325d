"""Optimiser and learning-rate schedule of a run: :func:`build_optimizer`, :func:`build_scheduler`,
:func:`steps_on_validation` (whether the schedule is stepped after validations, with the metric)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gspdml.config import OPTIMIZERS, TrainConfig
from gspdml.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    from gspdml.engine.state import TrainModule

__all__ = ["build_optimizer", "build_scheduler", "steps_on_validation"]


def build_optimizer(cfg: TrainConfig, module: TrainModule) -> torch.optim.Optimizer:
    """Optimizer over the model, the DML loss's own parameters and L_ZS's class table.

    The model's parameters follow :meth:`EmbeddingModel.param_groups` (no weight decay on norm
    layers, biases, 1-D parameters and GSP prototypes) when ``optim.no_decay_norm_bias``, else all
    decay. The losses' ``param_groups()`` (proxies, NIR flow, class-embedding table) get
    ``lr x lr_mult``; the proxies' multiplier is the loss's own ``proxy_lr_mult`` keyword. A loss
    group may set its own ``weight_decay`` (NIR: none on proxies and flow), else ``optim.weight_decay``.
    Adam and AdamW use ``optim.eps``.
    """
    o = cfg.optim
    groups: list[dict] = []
    seen: set[int] = set()

    def add(name: str, params, lr_mult: float, weight_decay: float) -> None:
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        if params:
            seen.update(id(p) for p in params)
            groups.append({"name": name, "params": params, "lr": o.lr * lr_mult, "lr_mult": lr_mult,
                           "weight_decay": weight_decay})

    for owner in (module.loss, module.zero_shot):
        for g in (owner.param_groups() if hasattr(owner, "param_groups") else []):
            add(g.get("name", "loss"), g["params"], float(g.get("lr_mult", 1.0)), float(g.get("weight_decay", o.weight_decay)))
    model = module.model
    if o.no_decay_norm_bias and hasattr(model, "param_groups"):
        for g in model.param_groups(o.weight_decay):
            add(g["name"], g["params"], 1.0, g["weight_decay"])
    add("weights", module.parameters(), 1.0, o.weight_decay)  # everything not yet grouped
    if not groups:
        raise ConfigError("nothing to train: the model and the loss have no parameter that requires gradients")
    name = o.name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, eps=o.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, eps=o.eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    raise unknown_choice("optim.name", o.name, OPTIMIZERS)  # pragma: no cover (validated)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int = 1):
    """LambdaLR: linear warm-up over ``optim.warmup_steps``, then constant / cosine / step decay, or
    ``multistep``: x ``gamma`` at each of ``optim.milestone_epochs`` (epoch e starts at step
    ``e * steps_per_epoch``); stepped after every optimiser step.

    ``plateau``: torch's ReduceLROnPlateau (mode max, factor ``optim.gamma``, patience
    ``optim.plateau_patience``, ``min_lr`` ``optim.min_lr``, torch's default relative threshold
    1e-4, no cooldown) on the validation MAP@R: stepped after every validation with that metric
    (:func:`steps_on_validation`), never after an optimiser step; it scales every parameter group.
    """
    o = cfg.optim
    if o.scheduler.lower() == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=o.gamma,
                                                          patience=o.plateau_patience, min_lr=o.min_lr)
    milestones = [int(e) * max(int(steps_per_epoch), 1) for e in o.milestone_epochs]
    kind = o.scheduler.lower()
    warm = o.warmup_steps
    total = max(int(total_steps), 1)

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if kind == "cosine":
            t = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if kind == "step":
            return o.gamma ** (max(step - warm, 0) // o.step_size)
        if kind == "multistep":
            return o.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_on_validation(scheduler) -> bool:
    """True for a schedule stepped after each validation with its MAP@R (``plateau``), False for one
    stepped after every optimiser step."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
