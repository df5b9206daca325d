"""What a run trains and where it stands: :class:`TrainModule` (model + losses as one module) and
:class:`TrainState` (module, optimiser, scheduler, precision and fp16 loss scaler, sampler,
counters, history, best score, patience, the divergence reference, RNG), whose
:meth:`~TrainState.state_dict` is the checkpoint dict.

A checkpoint (see :mod:`gspdml.engine.checkpoint` for the file format) holds::

    config, model, num_classes, class_ids, step, epoch, metrics, zero_shot     # best.pt and last.pt
    batch_in_epoch, loss, optimizer, scheduler, scaler, sampler, rng, trainer  # last.pt only
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gspdml.config import TrainConfig, resolve_precision, to_dict
from gspdml.engine.checkpoint import capture_rng_state, restore_rng_state
from gspdml.engine.distributed import DistContext, gather_labels, gather_with_grad
from gspdml.engine.optim import build_optimizer, build_scheduler
from gspdml.errors import CheckpointError, ConfigError

__all__ = ["TrainModule", "TrainState"]


class TrainModule(nn.Module):
    """Model + DML loss (+ L_ZS) as one module, so DDP synchronises every trained parameter.

    ``forward(x, mask, labels) -> (total, parts)`` with ``total = (1 - w) L_DML + w L_ZS`` (just
    ``L_DML`` without L_ZS) and ``parts`` the detached ``loss_dml`` (and ``loss_zs``).

    Under torchrun (``ctx.enabled``) this rank's embeddings, prototype marginals and labels are
    all-gathered in rank order (embeddings and marginals with gradients,
    :func:`gspdml.engine.distributed.gather_with_grad`) before any loss is computed, so the pair
    loss and its miner, XBM (which then enqueues the global batch on every rank), the proxy
    losses, NIR and L_ZS (class-disjoint halves of the global batch) all see the global batch,
    and every rank computes the same loss; no rescaling is needed for the one-process gradient
    (the argument is in :mod:`gspdml.engine.distributed`).
    """

    def __init__(self, model: nn.Module, loss: nn.Module, zero_shot: nn.Module | None, zs_weight: float,
                 ctx: DistContext | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.zero_shot = zero_shot
        self.zs_weight = float(zs_weight)
        self.ctx = ctx if ctx is not None else DistContext()

    def forward(self, x, mask, labels):
        if self.zero_shot is not None:
            emb, details = self.model(x, mask=mask, return_details=True)
            z = (details or {}).get("marginals")
            if z is None:
                raise ConfigError(
                    "loss.zero_shot.enabled needs a pooling with prototypes (details['marginals']), e.g. "
                    "model.pooling=gsp; this pooling returns none"
                )
        else:
            emb = self.model(x, mask=mask)
        if self.ctx.enabled:
            emb = gather_with_grad(emb, self.ctx)
            if self.zero_shot is not None:
                z = gather_with_grad(z, self.ctx)
            labels = gather_labels(labels, self.ctx)
        with torch.autocast(emb.device.type, enabled=False):
            l_dml = self.loss(emb.float(), labels)
            if self.zero_shot is None:
                return l_dml, {"loss_dml": l_dml.detach()}
            l_zs = self.zero_shot(z.float(), labels)
            total = (1.0 - self.zs_weight) * l_dml + self.zs_weight * l_zs
            return total, {"loss_dml": l_dml.detach(), "loss_zs": l_zs.detach()}


@dataclass
class TrainState:
    """Everything a run changes while it trains; ``state_dict()`` / ``load_state_dict()`` are the
    checkpoint. ``ctx`` is this process's place under torchrun (RNG states are kept per rank)."""

    config: dict
    """The resolved config (``to_dict(cfg)``), stored in every checkpoint."""
    module: TrainModule
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    """Loss scaling; enabled only for float16 autocast on CUDA."""
    sampler: Any
    """The class-balanced batch sampler (its position within the epoch is saved)."""
    class_ids: list
    """The training set's original label of each class ``0..C-1``."""
    ctx: DistContext = field(default_factory=DistContext)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list = field(default_factory=list)
    """Logged training rows and validation rows."""
    best: dict = field(default_factory=dict)
    """Best validation metrics with their ``step`` and ``epoch``."""
    best_score: float = -math.inf
    bad_evals: int = 0
    """Validations since the last improvement (early-stopping patience)."""
    stopped_early: bool = False
    best_weights: dict | None = None
    """CPU copy of the model's state dict at the best validation."""
    autocast_dtype: torch.dtype | None = None
    """The autocast dtype of ``train.precision`` on this device (``None``: fp32, no autocast)."""
    loss_reference: float | None = None
    """The run's first training loss (``train.divergence_factor`` compares against it)."""
    frozen: list = field(default_factory=list)
    """Backbone parameters whose ``requires_grad`` is off for ``train.freeze_backbone_epochs``."""

    @classmethod
    def create(cls, cfg: TrainConfig, train_set, sampler, total_steps: int, ctx: DistContext) -> TrainState:
        """Build the model, the losses, the optimiser, the schedule and the precision (autocast
        dtype of ``train.precision``, a GradScaler for float16) for ``cfg`` on ``ctx.device``;
        ``train_set`` has labels ``0..C-1`` and ``classes`` (original labels)."""
        from gspdml.losses import ZeroShotLoss, build_loss
        from gspdml.models import build_model

        num_classes = train_set.num_classes
        model = build_model(cfg.model)
        warm = cfg.train.pooling_warmup_epochs
        if warm > 0:  # the pooling's warm-up in steps, from epoch 0's length
            pooling = getattr(model, "pooling", None)
            if not hasattr(pooling, "warmup_steps"):
                raise ConfigError(f"train.pooling_warmup_epochs={warm} needs a pooling with a warm-up "
                                  f"('warmup_steps', e.g. gsp); model.pooling {cfg.model.pooling!r} has none")
            pooling.warmup_steps = warm * len(sampler)
        loss = build_loss(cfg.loss.name, num_classes=num_classes, embedding_dim=cfg.model.local_dim, **cfg.loss.kwargs)
        z = cfg.loss.zero_shot
        zs = ZeroShotLoss(num_classes, cfg.model.local_dim, ridge=z.ridge, scale=z.scale) if z.enabled else None
        module = TrainModule(model, loss, zs, z.weight, ctx).to(ctx.device)
        optimizer = build_optimizer(cfg, module)
        scheduler = build_scheduler(cfg, optimizer, total_steps, len(sampler))
        dtype = resolve_precision(cfg.train.precision, ctx.device.type)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and ctx.device.type == "cuda")
        class_ids = [c.item() if hasattr(c, "item") else c for c in train_set.classes]
        return cls(to_dict(cfg), module, optimizer, scheduler, scaler, sampler, class_ids, ctx, autocast_dtype=dtype)

    @property
    def model(self) -> nn.Module:
        return self.module.model

    @property
    def backbone_frozen(self) -> bool:
        return bool(self.frozen)

    def freeze_backbone(self, frozen: bool) -> None:
        """Turn the backbone's updates off (``requires_grad_(False)`` on its trainable parameters,
        BatchNorm statistics kept by :meth:`train_mode`) or back on (the same parameters only)."""
        if frozen and not self.frozen:
            backbone = getattr(self.model, "backbone", None)
            if backbone is None:
                raise ConfigError("train.freeze_backbone_epochs needs a model with a backbone (model.backbone)")
            self.frozen = [p for p in backbone.parameters() if p.requires_grad]
            for p in self.frozen:
                p.requires_grad_(False)
                p.grad = None
        elif not frozen and self.frozen:
            for p in self.frozen:
                p.requires_grad_(True)
            self.frozen = []

    def train_mode(self) -> None:
        """Training mode for the module; a frozen backbone stays in eval mode (no BatchNorm updates)."""
        self.module.train()
        if self.frozen:
            self.model.backbone.eval()

    def update_best(self, metrics: dict) -> bool:
        """Count a validation: a better MAP@R than the best so far becomes the best (metrics at this
        step, a CPU copy of the weights) and resets the patience count. Returns whether it did."""
        if not metrics["map_at_r"] > self.best_score:
            self.bad_evals += 1
            return False
        self.best_score, self.bad_evals = metrics["map_at_r"], 0
        self.best = {**metrics, "step": self.step, "epoch": self.epoch}
        self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return True

    def state_dict(self, best: bool = False) -> dict:
        """The checkpoint dict: the full training state (``last.pt``; collective under DDP, every
        rank calls it), or with ``best`` the best-validation weights and metrics (``best.pt``,
        written when the best is found)."""
        zs = self.module.zero_shot
        head = {
            "config": self.config,
            "model": self.best_weights if best else self.model.state_dict(),
            "num_classes": len(self.class_ids),
            "class_ids": self.class_ids,
            "step": self.best["step"] if best else self.step,
            "epoch": self.best["epoch"] if best else self.epoch,
            "metrics": self.best,
            "zero_shot": zs.state_dict() if zs is not None else None,
        }
        if best:
            return head
        rng = capture_rng_state()
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        return {
            **head,
            "batch_in_epoch": self.batch_in_epoch,
            "loss": self.module.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler,
            "sampler": self.sampler.state_dict(consumed=self.batch_in_epoch),
            "rng": self.ctx.all_gather_object(rng) if self.ctx.enabled else rng,
            "trainer": {"history": self.history, "best": self.best, "best_score": self.best_score,
                        "bad_evals": self.bad_evals, "stopped_early": self.stopped_early,
                        "loss_reference": self.loss_reference},
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue exactly from a ``last.pt`` dict: weights, losses, optimiser, schedule, scaler,
        sampler position, counters, history, best score, patience and this rank's RNG states.
        CheckpointError when it does not match this state's config."""
        where = ckpt.get("path", "the checkpoint")
        zs = self.module.zero_shot
        try:
            self.model.load_state_dict(ckpt["model"])
            self.module.loss.load_state_dict(ckpt["loss"])
            if zs is not None:
                if ckpt.get("zero_shot") is None:
                    raise CheckpointError("the checkpoint was trained without L_ZS but loss.zero_shot.enabled is true")
                zs.load_state_dict(ckpt["zero_shot"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
            if ckpt.get("sampler") is not None:
                self.sampler.load_state_dict(ckpt["sampler"])
            self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
            tr = ckpt["trainer"]
            self.history, self.best, self.best_score, self.bad_evals = tr["history"], tr["best"], tr["best_score"], tr["bad_evals"]
            self.stopped_early = tr.get("stopped_early", False)
            first = next((r["loss"] for r in self.history if "loss" in r), None)  # older checkpoints
            self.loss_reference = tr.get("loss_reference", first)
            rng = ckpt["rng"]
            restore_rng_state(rng[self.ctx.rank] if isinstance(rng, list) else rng)
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume from {where!r}: {exc}") from None
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"cannot resume from {where!r}: it does not match this config ({exc})") from None
