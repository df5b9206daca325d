"""The training loop: ``train(cfg) -> RunResult``.

One call trains one embedding model from a :class:`~gspdml.config.TrainConfig`:

- seeds Python, NumPy and torch (CPU and CUDA) from ``train.seed``;
- class-balanced batches (``data.classes_per_batch`` x ``data.samples_per_class``) drawn by
  :class:`gspdml.data.ClassBalancedBatchSampler` (one sampler per rank under torchrun);
- Adam (lr 1e-5, weight decay 1e-4 on weights only: no decay on BN/norm parameters and
  biases) by default; the loss's own parameter groups (proxies, flows) get ``lr x lr_mult``;
- total loss ``(1 - lambda) L_DML + lambda L_ZS`` when ``loss.zero_shot.enabled`` (L_ZS on the
  pooling's prototype marginals; its class-embedding table is trained with the rest);
- CUDA AMP (float16 + GradScaler) on GPU, optional gradient clipping, lr warm-up/schedules;
- validation MAP@R on the held-out MLRC fold (``data.fold``) or ``data.val_split``, early
  stopping with ``train.patience``, best weights kept;
- atomic checkpoints (``checkpoints/last.pt`` every ``train.checkpoint_every_steps`` and at the end,
  ``checkpoints/best.pt`` at each new best validation), exact resume with ``resume=``;
- a run folder (see :mod:`gspdml.engine.runs`) unless ``output_dir`` is null.

Programmatic use stays cheap: ``train(cfg, progress=False)`` with ``output_dir: null`` (or
``train.save_checkpoints: false``) writes nothing and returns the trained model in memory.
Datasets may also be passed directly (``datasets={"train": ds, "val": ds, "test": ds}``).
"""
from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gspdml.config import TrainConfig, config_from_dict, to_dict
from gspdml.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gspdml.engine.distributed import DistContext, cleanup, embed_dataset_distributed, init_from_env
from gspdml.engine.runs import LOGGER_NAME, RunFolder, new_run_dir
from gspdml.errors import CheckpointError, ConfigError, InputError
from gspdml.data.batches import dataset_labels, move_input, split_batch
from gspdml.engine.evaluate import evaluate_model

__all__ = [
    "train",
    "RunResult",
    "TrainModule",
    "build_optimizer",
    "build_scheduler",
    "build_datasets",
    "make_split",
    "split_fold",
    "evaluate_model",
    "seed_everything",
    "RelabeledDataset",
]

logger = logging.getLogger(LOGGER_NAME)


@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path | None
    """The run folder (``None`` when ``output_dir`` is null)."""
    best_metrics: dict
    """Best validation metrics (``map_at_r``, ... plus ``step``); empty without validation."""
    final_metrics: dict
    """Test metrics of the final model (best-validation weights when validated); empty when
    ``eval.test_at_end`` is false."""
    history: list[dict]
    """Logged training rows and validation rows (also in ``metrics.csv``)."""
    model: nn.Module
    """The trained embedding model (eval mode)."""
    steps: int = 0
    epochs: int = 0
    stopped_early: bool = False
    config: TrainConfig | None = None
    extras: dict = field(default_factory=dict)
    """``zero_shot``: the trained ZeroShotLoss module (when enabled); ``loss``: the DML loss."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class RelabeledDataset(Dataset):
    """A dataset view whose labels are remapped to ``0..C-1`` (losses with proxies need that)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        raw = dataset_labels(dataset).astype(np.int64)
        self.classes, self.labels = np.unique(raw, return_inverse=True)
        self.labels = self.labels.astype(np.int64)
        self.num_classes = len(self.classes)
        self._map = {int(c): i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, self._map[int(y)]


class _SkipBatches:
    """A batch sampler that skips the first ``skip`` batches of ``sampler`` (mid-epoch resume)."""

    def __init__(self, sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def _call_with_supported(fn: Callable, *args, **kwargs):
    """Call ``fn`` with only the keyword arguments its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def _transform(cfg: TrainConfig, train: bool):
    d = cfg.data
    if d.transform.lower() == "none":
        return None
    from gspdml.data import build_transform

    return _call_with_supported(
        build_transform, d.transform, train=train, normalization=d.normalization, image_size=d.image_size
    )


def make_split(cfg: TrainConfig, split: str, train: bool) -> Dataset:
    """``cfg.data``'s dataset, split ``split``, with the train or eval transform."""
    from gspdml.data import build_dataset

    d = cfg.data
    return build_dataset(d.dataset, d.root, split, transform=_transform(cfg, train), **d.options)


def split_fold(cfg: TrainConfig, train_ds: Dataset, train_eval_ds: Dataset | None = None):
    """MLRC fold ``cfg.data.fold``: ``(train subset, validation subset)`` of the training split.

    ``train_eval_ds`` is the same split with the evaluation transform (used for validation).
    """
    from gspdml.data import mlrc_folds, subset_by_classes

    d = cfg.data
    classes = np.unique(dataset_labels(train_ds)).tolist()
    train_classes, val_classes = mlrc_folds(classes, d.num_folds)[d.fold]
    val_ds = subset_by_classes(train_eval_ds if train_eval_ds is not None else train_ds, val_classes)
    return subset_by_classes(train_ds, train_classes), val_ds


def build_datasets(cfg: TrainConfig) -> dict[str, Dataset | None]:
    """The datasets of a run: ``train`` (labels 0..C-1), ``val``, ``test``, ``gallery``.

    With ``data.fold`` set, the train split's classes are divided into ``data.num_folds`` MLRC
    folds; training uses the other folds, validation the held-out one (eval transform).
    """
    d = cfg.data

    def make(split: str, train: bool):
        return make_split(cfg, split, train)

    train_ds = make(d.train_split, True)
    val_ds = None
    if d.fold is not None:
        train_ds, val_ds = split_fold(cfg, train_ds, make(d.train_split, False))
    elif d.val_split:
        val_ds = make(d.val_split, False)
    test_ds = gallery_ds = None
    if cfg.eval.test_at_end:
        test_ds = make(d.test_split, False)
        if d.gallery_split:
            gallery_ds = make(d.gallery_split, False)
    return {"train": train_ds, "val": val_ds, "test": test_ds, "gallery": gallery_ds}


class TrainModule(nn.Module):
    """Model + DML loss (+ L_ZS) as one module, so DDP synchronises every trained parameter."""

    def __init__(self, model: nn.Module, loss: nn.Module, zero_shot: nn.Module | None, zs_weight: float) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.zero_shot = zero_shot
        self.zs_weight = float(zs_weight)

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
        with torch.autocast(emb.device.type, enabled=False):
            l_dml = self.loss(emb.float(), labels)
            if self.zero_shot is None:
                return l_dml, {"loss_dml": l_dml.detach()}
            l_zs = self.zero_shot(z.float(), labels)
            total = (1.0 - self.zs_weight) * l_dml + self.zs_weight * l_zs
            return total, {"loss_dml": l_dml.detach(), "loss_zs": l_zs.detach()}


def build_optimizer(cfg: TrainConfig, module: TrainModule) -> torch.optim.Optimizer:
    """Optimizer over the model, the DML loss's own parameters and L_ZS's class table.

    The model's parameters follow :meth:`EmbeddingModel.param_groups` (no weight decay on norm
    layers, biases, 1-D parameters and GSP prototypes) when ``optim.no_decay_norm_bias``, else all
    decay. The losses' ``param_groups()`` (proxies, NIR flow, class-embedding table) get
    ``lr x lr_mult``; ``optim.proxy_lr_mult``, when set, overrides the multiplier of the
    ``proxies`` group only.
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
            mult = float(g.get("lr_mult", 1.0))
            if g.get("name") == "proxies" and o.proxy_lr_mult is not None:
                mult = float(o.proxy_lr_mult)
            add(g.get("name", "loss"), g["params"], mult, o.weight_decay)
    model = module.model
    if o.no_decay_norm_bias and hasattr(model, "param_groups"):
        for g in model.param_groups(o.weight_decay):
            add(g["name"], g["params"], 1.0, g["weight_decay"])
    add("weights", module.parameters(), 1.0, o.weight_decay)  # everything not yet grouped
    if not groups:
        raise ConfigError("nothing to train: the model and the loss have no parameter that requires gradients")
    name = o.name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    raise ConfigError(f"unknown optim.name {o.name!r}; valid choices are: adam, adamw, sgd")  # pragma: no cover


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """LambdaLR: linear warm-up over ``optim.warmup_steps``, then constant / cosine / step decay."""
    o = cfg.optim
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
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig | Mapping,
    progress: bool = True,
    *,
    resume: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    datasets: Mapping[str, Dataset | None] | None = None,
    callback: Callable[[dict], bool | None] | None = None,
) -> RunResult:
    """Train an embedding model as ``cfg`` says; see the module docstring.

    Args:
        cfg: a TrainConfig (or a nested dict, validated).
        progress: show tqdm bars (training and evaluation).
        resume: a checkpoint file or run folder to continue from exactly (``last.pt``): model,
            optimizer, scheduler, AMP scaler, loss state (XBM memory), L_ZS, sampler position,
            RNG states, step/epoch, best score and patience. The run folder is reused.
        run_dir: write the run here instead of a new ``output_dir/name`` folder.
        datasets: ready datasets ``{"train", "val", "test", "gallery"}`` (missing keys built from
            ``cfg.data``); ``train`` must have a ``labels`` array.
        callback: called after every optimiser step with ``{"step", "epoch", "loss", ...}``;
            returning True stops training (as if ``max_steps`` were reached).
    """
    if not isinstance(cfg, TrainConfig):
        if isinstance(cfg, Mapping):
            cfg = config_from_dict(dict(cfg))
        else:
            raise InputError(f"cfg must be a TrainConfig or a dict, got {type(cfg).__name__}")
    cfg = copy.deepcopy(cfg)
    t = cfg.train
    ctx = init_from_env(t.device)
    try:
        return _train(cfg, ctx, progress, resume, run_dir, datasets, callback)
    finally:
        cleanup(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, progress: bool, resume, run_dir, datasets, callback) -> RunResult:
    from gspdml.data import ClassBalancedBatchSampler
    from gspdml.losses import build_loss
    from gspdml.models import build_model

    t, d = cfg.train, cfg.data
    device = ctx.device
    progress = progress and ctx.is_main
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location="cpu", prefer="last")
        if "optimizer" not in ckpt:
            raise CheckpointError(
                f"{ckpt['path']!r} holds only model weights (a best.pt); resume from checkpoints/last.pt"
            )
        if run_dir is None:
            p = Path(ckpt["path"]).parent
            run_dir = p.parent if p.name == "checkpoints" else p

    seed_everything(t.seed + ctx.rank)

    # ---- run folder ------------------------------------------------------------------------
    folder_path = None
    if ctx.is_main and (cfg.output_dir is not None or run_dir is not None):
        folder_path = Path(run_dir) if run_dir is not None else new_run_dir(cfg.output_dir, cfg.name)
    run = RunFolder(folder_path)
    try:
        run.write_config(cfg)
        # ---- data ------------------------------------------------------------------------------
        built = dict(datasets or {})
        if "train" not in built:
            built = {**build_datasets(cfg), **built}
        elif d.fold is not None and built.get("val") is None:
            built["train"], built["val"] = split_fold(cfg, built["train"], built.get("train_eval"))
        train_ds = built.get("train")
        if train_ds is None:
            raise InputError("datasets['train'] is missing")
        train_ds = RelabeledDataset(train_ds)
        num_classes = train_ds.num_classes
        val_ds, test_ds, gallery_ds = built.get("val"), built.get("test"), built.get("gallery")
        if d.classes_per_batch > num_classes:
            raise ConfigError(
                f"data.classes_per_batch={d.classes_per_batch} but the training set has only {num_classes} classes"
            )
        sampler = ClassBalancedBatchSampler(
            train_ds.labels,
            classes_per_batch=d.classes_per_batch,
            samples_per_class=d.samples_per_class,
            seed=t.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            drop_last=True,
        )
        steps_per_epoch = len(sampler)
        if steps_per_epoch == 0:
            raise ConfigError(
                f"the class-balanced sampler yields no batch ({d.classes_per_batch} classes x "
                f"{d.samples_per_class} samples from {len(train_ds)} samples of {num_classes} classes)"
            )
        # the epoch length varies a little between epochs (greedy class-balanced plan): the step
        # budget for the schedule and the progress bar is estimated from epoch 0
        total_steps = t.max_epochs * steps_per_epoch
        if t.max_steps is not None:
            total_steps = min(total_steps, t.max_steps)
        max_steps = t.max_steps if t.max_steps is not None else math.inf

        # ---- model, losses, optimiser -----------------------------------------------------------
        model = build_model(cfg.model)
        loss_fn = build_loss(cfg.loss.name, num_classes=num_classes, embedding_dim=cfg.model.local_dim, **cfg.loss.kwargs)
        zs = None
        z_cfg = cfg.loss.zero_shot
        if z_cfg.enabled:
            from gspdml.losses import ZeroShotLoss

            zs = ZeroShotLoss(num_classes, cfg.model.local_dim, ridge=z_cfg.ridge, scale=z_cfg.scale)
        module = TrainModule(model, loss_fn, zs, z_cfg.weight).to(device)
        optimizer = build_optimizer(cfg, module)
        scheduler = build_scheduler(cfg, optimizer, total_steps)
        use_amp = (t.amp if t.amp is not None else device.type == "cuda") and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        wrapped: nn.Module = module
        if ctx.enabled:
            wrapped = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )

        # ---- state ------------------------------------------------------------------------
        step, epoch, batch_in_epoch = 0, 0, 0
        history: list[dict] = []
        best: dict = {}
        best_score = -math.inf
        bad_evals = 0
        stopped_early = False
        best_state = None
        if ckpt is not None:
            try:
                module.model.load_state_dict(ckpt["model"])
                module.loss.load_state_dict(ckpt["loss"])
                if zs is not None:
                    if ckpt.get("zero_shot") is None:
                        raise CheckpointError("the checkpoint was trained without L_ZS but loss.zero_shot.enabled is true")
                    zs.load_state_dict(ckpt["zero_shot"])
                optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"cannot resume from {ckpt['path']!r}: it does not match this config ({exc})"
                ) from None
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ckpt.get("sampler") is not None:
                sampler.load_state_dict(ckpt["sampler"])
            tr = ckpt["trainer"]
            step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
            history, best, best_score, bad_evals = tr["history"], tr["best"], tr["best_score"], tr["bad_evals"]
            stopped_early = tr.get("stopped_early", False)
            if best and run.checkpoints is not None and (run.checkpoints / "best.pt").is_file():
                best_state = load_checkpoint(run.checkpoints / "best.pt")["model"]
            restore_rng_state(ckpt["rng"][ctx.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt["path"], step, epoch, batch_in_epoch)

        validate_every = t.eval_every_steps
        has_val = val_ds is not None and validate_every != 0

        def full_state() -> dict:
            rng = capture_rng_state()
            if ctx.enabled:
                gathered = [None] * ctx.world_size
                torch.distributed.all_gather_object(gathered, rng)
                rng = gathered
            return {
                "config": to_dict(cfg),
                "model": module.model.state_dict(),
                "num_classes": num_classes,
                "class_ids": train_ds.classes.tolist(),
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "metrics": best,
                "loss": module.loss.state_dict(),
                "zero_shot": zs.state_dict() if zs is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_amp else None,
                "sampler": sampler.state_dict(consumed=batch_in_epoch),
                "rng": rng,
                "trainer": {"history": history, "best": best, "best_score": best_score,
                            "bad_evals": bad_evals, "stopped_early": stopped_early},
            }

        def save_last() -> None:
            state = full_state()  # collective under DDP: every rank takes part
            if ctx.is_main and t.save_checkpoints and run.checkpoints is not None:
                save_checkpoint(state, run.checkpoints / "last.pt")

        def validate() -> bool:
            """Validate, update best/patience; return True when early stopping triggers."""
            nonlocal best, best_score, bad_evals, best_state
            metrics = evaluate_model(
                module.model, val_ds, None, batch_size=cfg.eval.batch_size, recall_ks=cfg.eval.recall_ks,
                device=device, progress=progress, num_workers=d.num_workers, amp=use_amp, ctx=ctx, desc="validate",
            )
            row = {"step": step, "epoch": epoch, **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(row)
            score = metrics["map_at_r"]
            logger.info("step %d validation: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if score > best_score:
                best_score, bad_evals = score, 0
                best = {**metrics, "step": step, "epoch": epoch}
                best_state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
                if ctx.is_main and t.save_checkpoints and run.checkpoints is not None:
                    save_checkpoint(
                        {"config": to_dict(cfg), "model": best_state, "num_classes": num_classes,
                         "class_ids": train_ds.classes.tolist(), "step": step, "epoch": epoch, "metrics": best,
                         "zero_shot": zs.state_dict() if zs is not None else None},
                        run.checkpoints / "best.pt",
                    )
            else:
                bad_evals += 1
            return t.patience is not None and bad_evals >= t.patience

        # ---- loop --------------------------------------------------------------------------
        from tqdm.auto import tqdm

        if ckpt is None:
            logger.info(
                "training %s: %d train samples, %d classes, %d steps/epoch, device %s%s",
                cfg.name, len(train_ds), num_classes, steps_per_epoch, device, ", AMP" if use_amp else "",
            )
        bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.name}", disable=not progress, unit="step",
                   dynamic_ncols=True)
        finished = step >= max_steps or stopped_early
        window = {"loss": 0.0, "loss_dml": 0.0, "loss_zs": 0.0, "n": 0, "images": 0, "t0": time.perf_counter()}
        module.train()
        while not finished and epoch < t.max_epochs:
            sampler.set_epoch(epoch)
            epoch_len = len(sampler)
            # the sampler restores its own position from its state; skip the rest by hand otherwise
            skip = max(batch_in_epoch - int(getattr(sampler, "position", 0)), 0)
            gen = torch.Generator()
            gen.manual_seed(t.seed * 1_000_003 + epoch * 7919 + ctx.rank)
            loader = DataLoader(
                train_ds,
                batch_sampler=_SkipBatches(sampler, skip) if skip else sampler,
                num_workers=d.num_workers,
                pin_memory=device.type == "cuda",
                generator=gen,
            )
            for batch in loader:
                x, mask, y = split_batch(batch)
                x, mask = move_input(x, mask, device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                module.train()
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    total, parts = wrapped(x, mask, y)
                if not torch.isfinite(total):
                    raise InputError(
                        f"the training loss became {total.item()} at step {step + 1}; lower optim.lr or "
                        "enable train.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if t.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                loss_val = float(total.detach())
                window["loss"] += loss_val
                window["n"] += 1
                window["images"] += int(y.shape[0]) * ctx.world_size
                for k in ("loss_dml", "loss_zs"):
                    if k in parts:
                        window[k] += float(parts[k])
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                ips = window["images"] / elapsed
                if progress:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss_val:.4f}", img_s=f"{ips:.1f}")
                if step % t.log_every == 0 or step == max_steps or batch_in_epoch == epoch_len:
                    row = {"step": step, "epoch": epoch, "loss": window["loss"] / window["n"],
                           "lr": optimizer.param_groups[0]["lr"], "images_per_s": ips}
                    if "loss_zs" in parts:
                        row["loss_dml"] = window["loss_dml"] / window["n"]
                        row["loss_zs"] = window["loss_zs"] / window["n"]
                    history.append(row)
                    logger.info("step %d epoch %d loss %.5f lr %.3g %.1f img/s", step, epoch, row["loss"], row["lr"], ips)
                    window = {"loss": 0.0, "loss_dml": 0.0, "loss_zs": 0.0, "n": 0, "images": 0,
                              "t0": time.perf_counter()}
                if has_val and validate_every and step % validate_every == 0:
                    if validate():
                        stopped_early = finished = True
                if step >= max_steps:
                    finished = True
                if callback is not None and callback({"step": step, "epoch": epoch, "loss": loss_val, **{
                        k: float(v) for k, v in parts.items()}}):
                    finished = True
                if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0 and not finished:
                    save_last()
                if finished:
                    break
            if batch_in_epoch >= epoch_len:
                # end of epoch (complete): epoch validation, then move on
                if has_val and validate_every is None and not stopped_early:
                    if validate():
                        stopped_early = finished = True
                epoch += 1
                batch_in_epoch = 0
        bar.close()
        if stopped_early:
            logger.info("early stopping at step %d: no better validation MAP@R for %d validations", step, t.patience)
        save_last()

        # ---- final evaluation ----------------------------------------------------------------
        model = module.model
        if cfg.eval.use_best and best_state is not None:
            model.load_state_dict(best_state)
        final: dict = {}
        if test_ds is not None and cfg.eval.test_at_end:
            final = evaluate_model(
                model, test_ds, gallery_ds, batch_size=cfg.eval.batch_size, recall_ks=cfg.eval.recall_ks,
                device=device, progress=progress, num_workers=d.num_workers, amp=use_amp, ctx=ctx, desc="test",
            )
            logger.info("test (%s): %s", d.test_split, ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
        summary = {"name": cfg.name, "steps": step, "epochs": epoch, "stopped_early": stopped_early,
                   "best": best, "final": final,
                   "validation": [r for r in history if any(k.startswith("val_") for k in r)]}
        if ctx.is_main:
            run.write_metrics(summary, history)
            if cfg.train.plot:
                run.plot_curves(history)
        model.eval()
        return RunResult(
            run_dir=run.path, best_metrics=best, final_metrics=final, history=history, model=model,
            steps=step, epochs=epoch, stopped_early=stopped_early, config=cfg,
            extras={"zero_shot": zs, "loss": loss_fn, "num_classes": num_classes},
        )
    finally:
        run.close()
