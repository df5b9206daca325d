"""Checkpoint files: atomic save, load, resume, model rebuild from a run folder; RNG seeding,
capture and restore.

A checkpoint is a ``torch.save`` dict ``{"format": "gspdml-checkpoint", "version": 1, **state}``
where ``state`` is :meth:`gspdml.engine.state.TrainState.state_dict` (the one place its keys are
written)::

    config, model, num_classes, class_ids, step, epoch, metrics, zero_shot     # best.pt and last.pt
    batch_in_epoch, loss, optimizer, scheduler, scaler, sampler, rng, trainer  # last.pt only

Files are written to a temporary file in the same folder and moved into place with
``os.replace``, so a crash never leaves a half-written checkpoint behind.

Checkpoints hold NumPy RNG state, so they are loaded with ``weights_only=False``: only load
checkpoints you trust (as with any pickle).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gspdml.errors import CheckpointError

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "load_resume_checkpoint",
    "load_model_from_checkpoint",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT = "gspdml-checkpoint"
VERSION = 1


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def resolve_checkpoint(path_or_run_dir: str | os.PathLike, prefer: str = "best") -> Path:
    """The checkpoint file for a file path or a run folder.

    A run folder resolves to ``checkpoints/<prefer>.pt`` (``best`` or ``last``) and falls back to
    the other one.
    """
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    if p.is_dir():
        order = ["best", "last"] if prefer == "best" else ["last", "best"]
        for folder in (p / "checkpoints", p):
            for name in order:
                cand = folder / f"{name}.pt"
                if cand.is_file():
                    return cand
        raise CheckpointError(
            f"run folder {str(p)!r} has no checkpoint; expected checkpoints/best.pt or checkpoints/last.pt "
            "(was it trained with train.save_checkpoints=false?)"
        )
    raise CheckpointError(f"checkpoint {str(p)!r} does not exist; give a .pt file or a run folder")


def load_checkpoint(path_or_run_dir: str | os.PathLike, map_location: Any = "cpu", prefer: str = "best") -> dict:
    """Load a gspdml checkpoint (file or run folder) and check its format."""
    path = resolve_checkpoint(path_or_run_dir, prefer=prefer)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # corrupted/truncated/not a torch file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a gspdml checkpoint (expected a dict with format={FORMAT!r})"
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {state.get('version')}; this gspdml reads up to {VERSION}"
        )
    state["path"] = str(path)
    return state


def load_resume_checkpoint(path_or_run_dir: str | os.PathLike) -> tuple[dict, Path]:
    """The full training checkpoint to resume from (a run folder's ``last.pt``, or a file) and the
    run folder it belongs to."""
    state = load_checkpoint(path_or_run_dir, map_location="cpu", prefer="last")
    if "optimizer" not in state:
        raise CheckpointError(
            f"{state['path']!r} holds only model weights (a best.pt); resume from checkpoints/last.pt"
        )
    folder = Path(state["path"]).parent
    return state, folder.parent if folder.name == "checkpoints" else folder


def load_model_from_checkpoint(path_or_run_dir: str | os.PathLike, map_location: Any = "cpu"):
    """Rebuild the embedding model stored in a checkpoint (or a run folder's best/last checkpoint).

    The model is built from the config stored in the checkpoint (pretrained weights are not
    needed: the stored state dict replaces them) and put in eval mode.

    Returns:
        ``(model, cfg, extra)`` where ``cfg`` is the :class:`~gspdml.config.TrainConfig` and
        ``extra`` a dict with ``path, step, epoch, metrics, num_classes`` and, when present,
        ``zero_shot`` (the L_ZS module's state dict, e.g. its class-embedding table).
    """
    from gspdml.config import config_from_dict
    from gspdml.models import build_model

    state = load_checkpoint(path_or_run_dir, map_location=map_location)
    try:
        cfg = config_from_dict(state["config"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {state['path']!r} holds an invalid config: {exc}") from None
    cfg.model.pretrained = None
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {state['path']!r} does not match the model its config builds: {exc}") from None
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    extra = {
        "path": state["path"],
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "metrics": state.get("metrics", {}),
        "num_classes": state.get("num_classes"),
    }
    if state.get("zero_shot") is not None:
        extra["zero_shot"] = state["zero_shot"]
    return model, cfg, extra


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and (when available) all CUDA RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
