"""The run folder of one training run, and :class:`RunResult` (what ``train`` returns).

::

    <output_dir>/<name>/
        config.yaml        the resolved config (every key, defaults included)
        metrics.json       {"best": {...}, "final": {...}, "validation": [...], "steps": N}
        metrics.csv        one row per logged step / validation (step, epoch, loss, lr, val_*)
        log.txt            the training log
        curves.png         training loss and validation MAP@R against the step
        checkpoints/last.pt, checkpoints/best.pt
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gspdml.io import write_json

if TYPE_CHECKING:
    from torch import nn

    from gspdml.config import TrainConfig

__all__ = ["RunResult", "RunFolder", "new_run_dir", "console_logging", "LOGGER_NAME"]

LOGGER_NAME = "gspdml.engine"


def new_run_dir(output_dir: str | os.PathLike, name: str) -> Path:
    """``output_dir/name``, or ``name_2``, ``name_3``, ... if that folder already holds files."""
    base = Path(output_dir)
    cand = base / name
    i = 2
    while cand.exists() and any(cand.iterdir()):
        cand = base / f"{name}_{i}"
        i += 1
    cand.mkdir(parents=True, exist_ok=True)
    return cand


@dataclass
class RunResult:
    """What :func:`gspdml.engine.trainer.train` returns."""

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

    def summary(self) -> dict:
        """The content of ``metrics.json``."""
        return {"name": self.config.name if self.config is not None else None, "steps": self.steps,
                "epochs": self.epochs, "stopped_early": self.stopped_early, "best": self.best_metrics,
                "final": self.final_metrics,
                "validation": [r for r in self.history if any(k.startswith("val_") for k in r)]}


class RunFolder:
    """Writes the files of one run; a no-op object when ``path`` is None (in-memory runs)."""

    def __init__(self, path: Path | None, logger: logging.Logger | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._handler: logging.Handler | None = None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._handler = logging.FileHandler(self.path / "log.txt", mode="a")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(self._handler)
            if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
                self.logger.setLevel(logging.INFO)

    @property
    def checkpoints(self) -> Path | None:
        return None if self.path is None else self.path / "checkpoints"

    def write_config(self, cfg) -> None:
        if self.path is not None:
            from gspdml.config import save_config

            save_config(cfg, self.path / "config.yaml")

    def write_metrics(self, summary: dict, history: list[dict]) -> None:
        if self.path is None:
            return
        write_json(self.path / "metrics.json", summary)
        columns: list[str] = []
        for row in history:
            for k in row:
                if k not in columns:
                    columns.append(k)
        tmp = self.path / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, "") for k in columns})
        os.replace(tmp, self.path / "metrics.csv")

    def plot_curves(self, history: list[dict]) -> Path | None:
        """``curves.png``: training loss (left) and validation metrics (right) against the step."""
        if self.path is None or not history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in history if "loss" in r]
        val = [r for r in history if "val_map_at_r" in r]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        if train:
            axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="total")
            if any("loss_zs" in r for r in train):
                axes[0].plot([r["step"] for r in train], [r.get("loss_dml", float("nan")) for r in train], label="L_DML")
                axes[0].plot([r["step"] for r in train], [r.get("loss_zs", float("nan")) for r in train], label="L_ZS")
            axes[0].legend()
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss")
        axes[0].set_title("training loss")
        if val:
            for key, label in (("val_map_at_r", "MAP@R"), ("val_r_precision", "R-Precision"), ("val_precision_at_1", "P@1")):
                axes[1].plot([r["step"] for r in val], [r.get(key, float("nan")) for r in val], marker="o", label=label)
            axes[1].legend()
        else:
            axes[1].text(0.5, 0.5, "no validation\n(set data.fold for MLRC validation)", ha="center", va="center")
        axes[1].set_xlabel("step")
        axes[1].set_title("validation")
        fig.tight_layout()
        out = self.path / "curves.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def console_logging(level: int = logging.INFO) -> None:
    """Show gspdml's log messages on stderr (CLI use); other libraries' loggers stay quiet."""
    root = logging.getLogger("gspdml")
    if not any(getattr(h, "_gspdml_console", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._gspdml_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
