"""The context of one running training (torchvision's ``args`` plus what the loop carries):
:class:`RunContext` (config, datasets, folder, progress bar, logging window, the last good
checkpoint; evaluation, checkpoint writing with the finite check, the divergence and interrupt
errors) and :class:`StopSignal` (SIGINT / SIGTERM finish the current step)."""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from gspdml.config import TrainConfig
from gspdml.engine.checkpoint import find_non_finite, run_dir_of, save_checkpoint
from gspdml.engine.distributed import DistContext
from gspdml.engine.evaluate import evaluate_model
from gspdml.engine.runs import Interrupted, RunFolder, TrainingDiverged, resume_command
from gspdml.engine.state import TrainState

__all__ = ["RunContext", "StopSignal", "ignore_stop_signals", "new_window"]


def new_window() -> dict:
    """Loss sums and image count since the last logged row."""
    return {"loss": 0.0, "loss_dml": 0.0, "loss_zs": 0.0, "n": 0, "images": 0, "t0": time.perf_counter()}


class StopSignal:
    """SIGINT / SIGTERM while the loop runs: remember the signal, stop after the current step.
    A second signal stops at once (KeyboardInterrupt). Installed only from the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process (which finishes the step and
    shuts them down); a terminal's Ctrl-C reaches the whole process group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class RunContext:
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
    stop: StopSignal = field(default_factory=StopSignal)
    last_good: tuple[Path, int] | None = None
    """The last ``last.pt`` known to be good and its step (written here, or resumed from)."""
    window: dict = field(default_factory=new_window)

    def evaluate(self, state: TrainState, query: Dataset, gallery: Dataset | None, desc: str) -> dict:
        c = self.cfg
        return evaluate_model(state.model, query, gallery, batch_size=c.eval.batch_size, recall_ks=c.eval.recall_ks,
                              extra_metrics=c.eval.metrics,
                              device=self.ctx.device, progress=self.progress, num_workers=c.data.num_workers,
                              precision=state.autocast_dtype, ctx=self.ctx, desc=desc)

    def save(self, state: TrainState, best: bool = False) -> Path | None:
        """Write ``last.pt`` (every rank must call: the RNG states are gathered) or ``best.pt``;
        returns the file written (``None`` when this run writes no checkpoint). A state with a
        NaN or infinite tensor is never written: TrainingDiverged."""
        writes = self.ctx.is_main and self.cfg.train.save_checkpoints and self.folder.checkpoints is not None
        if best and not writes:
            return None
        ckpt = state.state_dict(best=best)
        name = "best.pt" if best else "last.pt"
        bad = find_non_finite(ckpt)
        if bad is not None:
            raise self.diverged(state.step, f"the state to checkpoint in {name} holds NaN or infinite values ({bad})")
        if not writes:
            return None
        path = save_checkpoint(ckpt, self.folder.checkpoints / name, check_finite=False)
        if not best:
            self.last_good = (path, state.step)
        return path

    def diverged(self, step: int, reason: str) -> TrainingDiverged:
        """The error that stops a run at ``step`` for ``reason``, naming the last good checkpoint."""
        if self.last_good is not None:
            path, good = self.last_good
            where = (f"the last good checkpoint is {path} (step {good}), kept as it was; continue from it with "
                     f"`{resume_command(run_dir_of(path))} optim.lr=<lower>`")
        else:
            where = "no checkpoint had been written yet"
        return TrainingDiverged(f"training stopped at step {step}: {reason}; {where}. Lower optim.lr or set "
                                "train.grad_clip")

    def stop_requested(self) -> bool:
        """A stop signal arrived (on any rank under torchrun)."""
        flag = self.stop.signum
        if not self.ctx.enabled:
            return flag is not None
        import torch.distributed as dist

        t = torch.tensor([flag or 0], device=self.ctx.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.stop.signum is None and int(t.item()):
            self.stop.signum = int(t.item())
        return bool(int(t.item()))

    def interrupt(self, state: TrainState) -> Interrupted:
        """Write ``last.pt`` for the stop signal and return the Interrupted to raise."""
        path = self.save(state)
        exc = Interrupted(self.stop.signum or signal.SIGINT, state.step, path, self.folder.path)
        self.folder.record(logging.WARNING, str(exc).replace("\n", "; "))
        return exc
