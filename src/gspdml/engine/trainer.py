"""The training loop, in the shape of torchvision's reference scripts: :func:`train` (set up,
resume, loop over epochs, final test), :func:`train_one_epoch` and :func:`validate`.

``train(cfg) -> RunResult`` trains one embedding model from a :class:`~gspdml.config.TrainConfig`:
class-balanced batches (one sampler per rank under torchrun), the optimiser and schedule of
:mod:`gspdml.engine.optim`, total loss ``(1 - lambda) L_DML + lambda L_ZS`` when
``loss.zero_shot.enabled``, CUDA AMP, optional gradient clipping; validation MAP@R on the held-out
MLRC fold (``data.fold``) or ``data.val_split``, early stopping (``train.patience``), best weights
kept; atomic checkpoints (``checkpoints/last.pt`` every ``train.checkpoint_every_steps`` and at the
end, ``checkpoints/best.pt`` at each new best; the dict is
:meth:`gspdml.engine.state.TrainState.state_dict`) and exact resume; a run folder
(:mod:`gspdml.engine.runs`) unless ``output_dir`` is null. ``train(cfg, progress=False)`` with
``output_dir: null`` writes nothing and returns the model in memory; datasets may be passed
directly (``datasets={"train": ds, "val": ds, "test": ds}``).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gspdml.config import TrainConfig, config_from_dict
from gspdml.data.splits import relabeled
from gspdml.data.batches import move_input, split_batch
from gspdml.engine.checkpoint import load_checkpoint, load_resume_checkpoint, save_checkpoint, seed_everything
from gspdml.engine.datasets import build_datasets, build_sampler
from gspdml.engine.distributed import DistContext, cleanup, init_from_env
from gspdml.engine.evaluate import evaluate_model
from gspdml.engine.runs import LOGGER_NAME, RunFolder, RunResult, new_run_dir
from gspdml.engine.state import TrainState
from gspdml.errors import InputError

__all__ = ["train", "train_one_epoch", "validate"]

logger = logging.getLogger(LOGGER_NAME)


def _window() -> dict:
    """Loss sums and image count since the last logged row."""
    return {"loss": 0.0, "loss_dml": 0.0, "loss_zs": 0.0, "n": 0, "images": 0, "t0": time.perf_counter()}


@dataclass
class _Run:
    """What stays fixed while one run trains (torchvision's ``args``), plus the logging window."""

    cfg: TrainConfig
    ctx: DistContext
    folder: RunFolder
    train_set: Dataset
    val_set: Dataset | None
    """``None`` when there is nothing to validate on or ``train.eval_every_steps`` is 0."""
    forward: nn.Module
    """The TrainModule, wrapped in DistributedDataParallel under torchrun."""
    progress: bool
    callback: Callable[[dict], bool | None] | None
    max_steps: float
    bar: Any
    window: dict = field(default_factory=_window)

    def evaluate(self, state: TrainState, query: Dataset, gallery: Dataset | None, desc: str) -> dict:
        c = self.cfg
        return evaluate_model(state.model, query, gallery, batch_size=c.eval.batch_size, recall_ks=c.eval.recall_ks,
                              device=self.ctx.device, progress=self.progress, num_workers=c.data.num_workers,
                              amp=state.amp, ctx=self.ctx, desc=desc)

    def save(self, state: TrainState, best: bool = False) -> None:
        """Write ``last.pt`` (every rank must call: the RNG states are gathered) or ``best.pt``."""
        writes = self.ctx.is_main and self.cfg.train.save_checkpoints and self.folder.checkpoints is not None
        if best and not writes:
            return
        ckpt = state.state_dict(best=best)
        if writes:
            save_checkpoint(ckpt, self.folder.checkpoints / ("best.pt" if best else "last.pt"))


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
            ``cfg.data``, see :func:`gspdml.engine.datasets.build_datasets`); ``train`` must have a
            ``labels`` array.
        callback: called after every optimiser step with ``{"step", "epoch", "loss", ...}``;
            returning True stops training (as if ``max_steps`` were reached).
    """
    if not isinstance(cfg, TrainConfig):
        if not isinstance(cfg, Mapping):
            raise InputError(f"cfg must be a TrainConfig or a dict, got {type(cfg).__name__}")
        cfg = config_from_dict(dict(cfg))
    cfg = copy.deepcopy(cfg)
    ctx = init_from_env(cfg.train.device)
    try:
        return _train(cfg, ctx, progress and ctx.is_main, resume, run_dir, datasets, callback)
    finally:
        cleanup(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, progress: bool, resume, run_dir, datasets, callback) -> RunResult:
    t = cfg.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt = None
    if resume is not None:
        ckpt, resumed_dir = load_resume_checkpoint(resume)
        run_dir = resumed_dir if run_dir is None else run_dir
    seed_everything(t.seed + ctx.rank)
    path = None
    if ctx.is_main and (cfg.output_dir is not None or run_dir is not None):
        path = Path(run_dir) if run_dir is not None else new_run_dir(cfg.output_dir, cfg.name)
    folder = RunFolder(path)
    try:
        folder.write_config(cfg)
        data = build_datasets(cfg, datasets)
        train_set = relabeled(data["train"])
        sampler = build_sampler(cfg, train_set, ctx)
        # the epoch length varies a little between epochs (greedy class-balanced plan): the step
        # budget for the schedule and the progress bar is estimated from epoch 0
        total_steps = min(t.max_epochs * len(sampler), t.max_steps or math.inf)
        state = TrainState.create(cfg, train_set, sampler, total_steps, ctx)
        forward = ctx.wrap(state.module)
        if ckpt is not None:
            _resume(state, ckpt, folder, ctx)
        else:
            logger.info("training %s: %d train samples, %d classes, %d steps/epoch, device %s%s", cfg.name,
                        len(train_set), train_set.num_classes, len(sampler), ctx.device, ", AMP" if state.amp else "")

        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state.step, desc=f"train {cfg.name}", disable=not progress,
                   unit="step", dynamic_ncols=True)
        run = _Run(cfg, ctx, folder, train_set, data.get("val") if t.eval_every_steps != 0 else None, forward,
                   progress, callback, t.max_steps if t.max_steps is not None else math.inf, bar)
        finished = state.step >= run.max_steps or state.stopped_early
        state.module.train()
        while not finished and state.epoch < t.max_epochs:
            finished = train_one_epoch(state, run)
        bar.close()
        if state.stopped_early:
            logger.info("early stopping at step %d: no better validation MAP@R for %d validations", state.step,
                        t.patience)
        run.save(state)
        return _finish(state, run, data.get("test"), data.get("gallery"))
    finally:
        folder.close()


def _resume(state: TrainState, ckpt: dict, folder: RunFolder, ctx: DistContext) -> None:
    """Load ``ckpt`` into ``state`` and the best weights from ``best.pt`` (read by rank 0, sent to all)."""
    state.load_state_dict(ckpt)
    weights = None
    if state.best and folder.checkpoints is not None and (folder.checkpoints / "best.pt").is_file():
        weights = load_checkpoint(folder.checkpoints / "best.pt")["model"]
    state.best_weights = ctx.broadcast_object(weights)
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt["path"], state.step, state.epoch,
                state.batch_in_epoch)


def train_one_epoch(state: TrainState, run: _Run) -> bool:
    """Train on epoch ``state.epoch`` (the rest of it after a mid-epoch resume): optimiser steps,
    logged rows, step-wise validation and checkpoints, then the end-of-epoch validation.

    Returns True when training is finished (max steps, early stopping, or the callback said so).
    """
    t = run.cfg.train
    sampler = state.sampler
    sampler.set_epoch(state.epoch)  # continues at the saved position within a resumed epoch
    epoch_len = len(sampler)
    gen = torch.Generator().manual_seed(t.seed * 1_000_003 + state.epoch * 7919 + run.ctx.rank)
    loader = DataLoader(run.train_set, batch_sampler=sampler, num_workers=run.cfg.data.num_workers,
                        pin_memory=run.ctx.device.type == "cuda", generator=gen)
    finished = False
    for batch in loader:
        loss, parts, images = _optimizer_step(state, run, batch)
        _log_step(state, run, loss, parts, images, epoch_len)
        every = t.eval_every_steps
        if run.val_set is not None and every and state.step % every == 0 and validate(state, run):
            state.stopped_early = finished = True
        if state.step >= run.max_steps:
            finished = True
        if run.callback is not None and run.callback({"step": state.step, "epoch": state.epoch, "loss": loss, **parts}):
            finished = True
        if t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0 and not finished:
            run.save(state)
        if finished:
            break
    if state.batch_in_epoch >= epoch_len:  # the epoch is complete
        if run.val_set is not None and t.eval_every_steps is None and not state.stopped_early and validate(state, run):
            state.stopped_early = finished = True
        state.epoch += 1
        state.batch_in_epoch = 0
    return finished


def _optimizer_step(state: TrainState, run: _Run, batch) -> tuple[float, dict, int]:
    """Forward, backward and one optimiser + schedule step; returns (loss, loss parts, batch size)."""
    device, t = run.ctx.device, run.cfg.train
    x, mask, y = split_batch(batch)
    x, mask = move_input(x, mask, device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    state.module.train()
    with torch.autocast(device.type, dtype=torch.float16, enabled=state.amp):
        total, parts = run.forward(x, mask, y)
    if not torch.isfinite(total):
        raise InputError(
            f"the training loss became {total.item()} at step {state.step + 1}; lower optim.lr or enable train.grad_clip"
        )
    optimizer, scaler = state.optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    if t.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(state.module.parameters(), t.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    state.scheduler.step()
    state.step += 1
    state.batch_in_epoch += 1
    return float(total.detach()), {k: float(v) for k, v in parts.items()}, int(y.shape[0])


def _log_step(state: TrainState, run: _Run, loss: float, parts: dict, images: int, epoch_len: int) -> None:
    """Progress bar; every ``train.log_every`` steps (and at the end of an epoch or of training)
    a history row with the window's mean losses, the lr and the throughput."""
    w = run.window
    w["loss"] += loss
    w["n"] += 1
    w["images"] += images * run.ctx.world_size
    for k in ("loss_dml", "loss_zs"):
        w[k] += parts.get(k, 0.0)
    ips = w["images"] / max(time.perf_counter() - w["t0"], 1e-9)
    if run.progress:
        run.bar.update(1)
        run.bar.set_postfix(epoch=state.epoch, loss=f"{loss:.4f}", img_s=f"{ips:.1f}")
    if state.step % run.cfg.train.log_every == 0 or state.step == run.max_steps or state.batch_in_epoch == epoch_len:
        row = {"step": state.step, "epoch": state.epoch, "loss": w["loss"] / w["n"],
               "lr": state.optimizer.param_groups[0]["lr"], "images_per_s": ips}
        if "loss_zs" in parts:
            row["loss_dml"] = w["loss_dml"] / w["n"]
            row["loss_zs"] = w["loss_zs"] / w["n"]
        state.history.append(row)
        logger.info("step %d epoch %d loss %.5f lr %.3g %.1f img/s", state.step, state.epoch, row["loss"], row["lr"], ips)
        run.window = _window()


def validate(state: TrainState, run: _Run) -> bool:
    """Validation metrics of the current model as a history row; a new best MAP@R keeps the
    weights (and writes ``best.pt``), otherwise the patience count grows.

    Returns True when early stopping triggers (``train.patience`` validations without a better one).
    """
    metrics = run.evaluate(state, run.val_set, None, "validate")
    state.history.append({"step": state.step, "epoch": state.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
    logger.info("step %d validation: %s", state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if state.update_best(metrics):
        run.save(state, best=True)
    patience = run.cfg.train.patience
    return patience is not None and state.bad_evals >= patience


def _finish(state: TrainState, run: _Run, test_set: Dataset | None, gallery_set: Dataset | None) -> RunResult:
    """Final test (best-validation weights when ``eval.use_best``), ``metrics.json``/``.csv``, curves."""
    cfg = run.cfg
    if cfg.eval.use_best and state.best_weights is not None:
        state.model.load_state_dict(state.best_weights)
    final: dict = {}
    if test_set is not None and cfg.eval.test_at_end:
        final = run.evaluate(state, test_set, gallery_set, "test")
        logger.info("test (%s): %s", cfg.data.test_split, ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
    state.model.eval()
    module = state.module
    result = RunResult(
        run_dir=run.folder.path, best_metrics=state.best, final_metrics=final, history=state.history,
        model=state.model, steps=state.step, epochs=state.epoch, stopped_early=state.stopped_early, config=cfg,
        extras={"zero_shot": module.zero_shot, "loss": module.loss, "num_classes": len(state.class_ids)},
    )
    if run.ctx.is_main:
        run.folder.write_metrics(result.summary(), state.history)
        if cfg.train.plot:
            run.folder.plot_curves(state.history)
    return result
