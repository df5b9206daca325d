"""The training loop, in the shape of torchvision's reference scripts: :func:`train` (set up,
resume, loop over epochs, final test), :func:`train_one_epoch` and :func:`validate`.

``train(cfg) -> RunResult`` trains one embedding model from a :class:`~gspdml.config.TrainConfig`:
class-balanced batches (under torchrun every rank takes its share of one global batch per step
and the losses see the gathered global batch), the optimiser and schedule of
:mod:`gspdml.engine.optim`, total loss ``(1 - lambda) L_DML + lambda L_ZS`` when
``loss.zero_shot.enabled``, autocast in ``train.precision`` (fp16 loss scaling on CUDA), optional
gradient clipping, a frozen backbone for ``train.freeze_backbone_epochs``; validation MAP@R on the
held-out MLRC fold (``data.fold``) or ``data.val_split``, early stopping (``train.patience``), best
weights kept; atomic checkpoints (``checkpoints/last.pt`` every ``train.checkpoint_every_steps``,
at the end and on SIGINT/SIGTERM; ``checkpoints/best.pt`` at each new best; the dict is
:meth:`gspdml.engine.state.TrainState.state_dict`) and exact resume; a run folder
(:mod:`gspdml.engine.runs`) unless ``output_dir`` is null. ``train(cfg, progress=False)`` with
``output_dir: null`` writes nothing and returns the model in memory; datasets may be passed
directly (``datasets={"train": ds, "val": ds, "test": ds}``).

Order of a run: resolve and lock the folder of a resume, read its checkpoint, build the datasets,
the sampler, the model, losses, optimiser and schedule and load the checkpoint into them; only then
is the run folder created / touched (:meth:`gspdml.engine.runs.RunFolder.open`), so an invalid run
writes nothing and a failed resume leaves its folder as it was. A failure after that point is also
written to ``log.txt``.

Stops: SIGINT/SIGTERM finish the current step, write ``last.pt`` and raise
:class:`~gspdml.engine.runs.Interrupted` (exit code 130/143 on the command line). A non-finite
loss, a loss above ``train.divergence_factor`` x the first one, a gradient norm that is non-finite
or above ``train.max_grad_norm``, or a non-finite state about to be checkpointed raise
:class:`~gspdml.engine.runs.TrainingDiverged` naming the step and the last good checkpoint, which
is never overwritten with the bad state.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from gspdml.config import TrainConfig, config_from_dict
from gspdml.data.batches import move_input, split_batch
from gspdml.data.splits import relabeled
from gspdml.engine.checkpoint import load_checkpoint, load_resume_checkpoint, resolve_checkpoint, run_dir_of, seed_everything
from gspdml.engine.context import RunContext, ignore_stop_signals, new_window
from gspdml.engine.datasets import build_datasets, build_sampler, worker_error_message
from gspdml.engine.distributed import DistContext, cleanup, init_from_env
from gspdml.engine.optim import steps_on_validation
from gspdml.engine.runs import LOGGER_NAME, Interrupted, RunFolder, RunLock, RunResult, new_run_dir
from gspdml.engine.state import TrainState
from gspdml.errors import CheckpointError, ConfigError, GspdmlError, InputError

__all__ = ["train", "train_one_epoch", "validate"]

logger = logging.getLogger(LOGGER_NAME)


def train(
    cfg: TrainConfig | Mapping,
    progress: bool = True,
    *,
    resume: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    datasets: Mapping[str, Dataset | None] | None = None,
    callback: Callable[[dict], bool | None] | None = None,
    trust_checkpoint: bool = False,
) -> RunResult:
    """Train an embedding model as ``cfg`` says; see the module docstring.

    Args:
        cfg: a TrainConfig (or a nested dict, validated).
        progress: show tqdm bars (training and evaluation).
        resume: a checkpoint file or run folder to continue from exactly (``last.pt``): model,
            optimizer, scheduler, loss scaler, loss state (XBM memory), L_ZS, sampler position,
            RNG states, step/epoch, best score and patience. The run folder is reused (and locked).
        run_dir: write the run here instead of a new ``output_dir/name`` folder.
        datasets: ready datasets ``{"train", "val", "test", "gallery"}`` (missing keys built from
            ``cfg.data``, see :func:`gspdml.engine.datasets.build_datasets`); ``train`` must have a
            ``labels`` array.
        callback: called after every optimiser step with ``{"step", "epoch", "loss", ...}``;
            returning True stops training (as if ``max_steps`` were reached).
        trust_checkpoint: read ``resume`` with full unpickling (``weights_only=False``), for a
            trusted file that holds more than tensors and plain values.

    Raises:
        Interrupted: on SIGINT/SIGTERM, after the current step and writing ``last.pt``.
        TrainingDiverged: non-finite or exploding loss, gradient norm or state.
        RunFolderLocked: another process trains in the run folder.
    """
    if not isinstance(cfg, TrainConfig):
        if not isinstance(cfg, Mapping):
            raise InputError(f"cfg must be a TrainConfig or a dict, got {type(cfg).__name__}")
        cfg = config_from_dict(dict(cfg))
    cfg = copy.deepcopy(cfg)
    ctx = init_from_env(cfg.train.device)
    try:
        return _train(cfg, ctx, progress and ctx.is_main, resume, run_dir, datasets, callback, trust_checkpoint)
    finally:
        cleanup(ctx)


def _on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0; its GspdmlError is raised on every rank (no rank waits forever)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except GspdmlError as exc:
            error = exc
    message = ctx.broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise CheckpointError(message)
    return result


def _train(cfg: TrainConfig, ctx: DistContext, progress: bool, resume, run_dir, datasets, callback,
           trust: bool) -> RunResult:
    t = cfg.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    target = Path(run_dir) if run_dir is not None else None
    lock: RunLock | None = None
    folder: RunFolder | None = None
    try:
        # 1. validate and build everything; nothing is written (a resumed folder is only locked)
        ckpt = None
        if resume is not None:
            resume_file = resolve_checkpoint(resume, prefer="last")
            target = target if target is not None else run_dir_of(resume_file)
        if target is not None and target.is_dir():
            lock = _on_main(ctx, lambda: RunLock(target).acquire())
        if resume is not None:
            ckpt, _ = load_resume_checkpoint(resume_file, trust=trust)
        seed_everything(t.seed + ctx.rank)
        data = build_datasets(cfg, datasets)
        if cfg.optim.scheduler.lower() == "plateau" and data.get("val") is None:
            raise ConfigError("optim.scheduler=plateau steps on the validation MAP@R but this run has no validation "
                              "set; set data.fold (an MLRC fold) or data.val_split (e.g. test), or pass datasets['val']")
        train_set = relabeled(data["train"])
        sampler = build_sampler(cfg, train_set, ctx)
        # the epoch length varies a little between epochs (greedy class-balanced plan): the step
        # budget for the schedule and the progress bar is estimated from epoch 0
        total_steps = min(t.max_epochs * len(sampler), t.max_steps or math.inf)
        state = TrainState.create(cfg, train_set, sampler, total_steps, ctx)
        forward = ctx.wrap(state.module)
        best_weights = None
        if ckpt is not None:
            state.load_state_dict(ckpt)
            best_file = run_dir_of(ckpt["path"]) / "checkpoints" / "best.pt"
            if state.best and ctx.is_main and best_file.is_file():
                best_weights = load_checkpoint(best_file, trust=trust)["model"]
            state.best_weights = ctx.broadcast_object(best_weights)

        # 2. commit: create / lock the run folder, log.txt, orphan clean-up, config.yaml
        def commit() -> RunFolder:
            if target is not None:
                return RunFolder(target).open(cfg, lock)
            if cfg.output_dir is None:
                return RunFolder(None)
            path = new_run_dir(cfg.output_dir, cfg.name)
            try:
                return RunFolder(path).open(cfg)
            except BaseException:
                if not any(path.iterdir()):  # leave no empty folder behind
                    path.rmdir()
                raise

        folder = _on_main(ctx, commit) or RunFolder(None)
        lock = None  # the folder holds it now
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        return _loop(cfg, ctx, progress, callback, folder, data, train_set, sampler, total_steps, state, forward, ckpt)
    except Interrupted:
        raise
    except GspdmlError as exc:
        folder.record(logging.ERROR, f"run failed: {worker_error_message(exc)}")
        raise
    except KeyboardInterrupt:
        folder.record(logging.WARNING, "stopped at once by a second interrupt; no checkpoint was written for it")
        raise
    except BaseException as exc:
        folder.record(logging.ERROR, f"run failed: {type(exc).__name__}: {exc}", exc_info=True)
        raise
    finally:
        folder.close()


def _loop(cfg, ctx, progress, callback, folder, data, train_set, sampler, total_steps, state, forward, ckpt) -> RunResult:
    t = cfg.train
    if ckpt is not None:
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt["path"], state.step, state.epoch,
                    state.batch_in_epoch)
    else:
        dtype = state.autocast_dtype
        precision = "" if dtype is None else f", autocast {str(dtype).replace('torch.', '')}"
        logger.info("training %s: %d train samples, %d classes, %d steps/epoch, device %s%s", cfg.name,
                    len(train_set), train_set.num_classes, len(sampler), ctx.device, precision)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state.step, desc=f"train {cfg.name}", disable=not progress,
               unit="step", dynamic_ncols=True)
    run = RunContext(cfg, ctx, folder, train_set, data.get("val") if t.eval_every_steps != 0 else None, forward,
                     progress, callback, t.max_steps if t.max_steps is not None else math.inf, bar)
    if ckpt is not None:
        run.last_good = (Path(ckpt["path"]), int(ckpt["step"]))
    finished = state.step >= run.max_steps or state.stopped_early
    run.stop.install()
    try:
        state.train_mode()
        while not finished and state.epoch < t.max_epochs:
            finished = train_one_epoch(state, run)
            if not finished and run.stop_requested():  # arrived during the end-of-epoch validation
                raise run.interrupt(state)
        bar.close()
        if state.stopped_early:
            logger.info("early stopping at step %d: no better validation MAP@R for %d validations", state.step,
                        t.patience)
        state.freeze_backbone(False)
        if run.stop.signum is not None:  # arrived during the last step or its validation
            raise run.interrupt(state)
        run.save(state)
    finally:
        run.stop.restore()
        bar.close()
    if run.stop.signum is not None:  # arrived during the final save
        raise run.interrupt(state)
    return _finish(state, run, data.get("test"), data.get("gallery"))


def train_one_epoch(state: TrainState, run: RunContext) -> bool:
    """Train on epoch ``state.epoch`` (the rest of it after a mid-epoch resume): optimiser steps,
    logged rows, step-wise validation and checkpoints, then the end-of-epoch validation. The
    backbone is frozen in the first ``train.freeze_backbone_epochs`` epochs.

    Returns True when training is finished (max steps, early stopping, or the callback said so).
    Raises Interrupted after the step during which SIGINT/SIGTERM arrived (``last.pt`` written).
    """
    t = run.cfg.train
    frozen = state.epoch < t.freeze_backbone_epochs
    if frozen != state.backbone_frozen:
        state.freeze_backbone(frozen)
        logger.info("epoch %d: backbone %s (train.freeze_backbone_epochs=%d)", state.epoch,
                    "frozen" if frozen else "unfrozen", t.freeze_backbone_epochs)
    sampler = state.sampler
    sampler.set_epoch(state.epoch)  # continues at the saved position within a resumed epoch
    epoch_len = len(sampler)
    gen = torch.Generator().manual_seed(t.seed * 1_000_003 + state.epoch * 7919 + run.ctx.rank)
    workers = run.cfg.data.num_workers
    loader = DataLoader(run.train_set, batch_sampler=sampler, num_workers=workers,
                        pin_memory=run.ctx.device.type == "cuda", generator=gen,
                        worker_init_fn=ignore_stop_signals if workers > 0 else None)
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
        if run.stop_requested():
            raise run.interrupt(state)
    if state.batch_in_epoch >= epoch_len:  # the epoch is complete
        if run.val_set is not None and t.eval_every_steps is None and not state.stopped_early and validate(state, run):
            state.stopped_early = finished = True
        state.epoch += 1
        state.batch_in_epoch = 0
    return finished


def _grad_norm(state: TrainState, clip: float | None) -> float:
    """The total gradient norm before clipping (clipped to ``clip`` when given)."""
    params = [p for p in state.module.parameters() if p.grad is not None]
    if clip is not None:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


def _optimizer_step(state: TrainState, run: RunContext, batch) -> tuple[float, dict, int]:
    """Forward, backward and one optimiser + schedule step; returns (loss, loss parts, batch size).

    Before the update is applied the loss (finite, below the divergence threshold) and, with
    ``train.grad_clip`` or ``train.max_grad_norm``, the gradient norm are checked: a failed check
    raises TrainingDiverged and the step is not applied.
    """
    device, t = run.ctx.device, run.cfg.train
    step = state.step + 1
    x, mask, y = split_batch(batch)
    x, mask = move_input(x, mask, device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    state.train_mode()
    dtype = state.autocast_dtype
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        total, parts = run.forward(x, mask, y)
    value = float(total.detach())
    if not math.isfinite(value):
        raise run.diverged(step, f"the training loss became {value}")
    ref, factor = state.loss_reference, t.divergence_factor
    if ref is None:
        state.loss_reference = value
    elif factor is not None and value > ref + factor * max(abs(ref), 1.0):
        raise run.diverged(step, f"the training loss {value:.4g} grew beyond {factor:g} x its first value {ref:.4g} "
                                 "(train.divergence_factor)")
    optimizer, scaler = state.optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    if t.grad_clip is not None or t.max_grad_norm is not None or t.grad_clip_value is not None:
        scaler.unscale_(optimizer)
        norm = _grad_norm(state, t.grad_clip)
        if not math.isfinite(norm) and not scaler.is_enabled():  # fp16 loss scaling skips such a step itself
            raise run.diverged(step, f"the gradient norm became {norm}")
        if t.max_grad_norm is not None and math.isfinite(norm) and norm > t.max_grad_norm:
            raise run.diverged(step, f"the gradient norm {norm:.4g} exceeds train.max_grad_norm={t.max_grad_norm:g}")
        if t.grad_clip_value is not None:  # after the norm: each element of the model's gradients
            torch.nn.utils.clip_grad_value_([p for p in state.model.parameters() if p.grad is not None],
                                            t.grad_clip_value)
    scaler.step(optimizer)
    scaler.update()
    if not steps_on_validation(state.scheduler):  # a plateau schedule steps in validate()
        state.scheduler.step()
    state.step += 1
    state.batch_in_epoch += 1
    return value, {k: float(v) for k, v in parts.items()}, int(y.shape[0])


def _log_step(state: TrainState, run: RunContext, loss: float, parts: dict, images: int, epoch_len: int) -> None:
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
        run.window = new_window()


def validate(state: TrainState, run: RunContext) -> bool:
    """Validation metrics of the current model as a history row; a new best MAP@R keeps the
    weights (and writes ``best.pt``), otherwise the patience count grows. A ``plateau`` lr
    schedule (``optim.scheduler``) steps here, on the validation MAP@R.

    Returns True when early stopping triggers (``train.patience`` validations without a better one).
    """
    metrics = run.evaluate(state, run.val_set, None, "validate")
    state.history.append({"step": state.step, "epoch": state.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
    logger.info("step %d validation: %s", state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if steps_on_validation(state.scheduler):  # optim.scheduler=plateau: on the validation MAP@R
        state.scheduler.step(metrics["map_at_r"])
    if state.update_best(metrics):
        run.save(state, best=True)
    patience = run.cfg.train.patience
    return patience is not None and state.bad_evals >= patience


def _finish(state: TrainState, run: RunContext, test_set: Dataset | None, gallery_set: Dataset | None) -> RunResult:
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
