"""Checkpoint files: atomic, checked save; safe load; resume; model rebuild from a run folder; RNG
seeding, capture and restore.

A checkpoint is a ``torch.save`` dict ``{"format": "gspdml-checkpoint", "version": 1, **state}``
where ``state`` is :meth:`gspdml.engine.state.TrainState.state_dict` (the one place its keys are
written)::

    config, model, num_classes, class_ids, step, epoch, metrics, zero_shot     # best.pt and last.pt
    batch_in_epoch, loss, optimizer, scheduler, scaler, sampler, rng, trainer  # last.pt only

It holds only tensors and plain Python values (dicts, lists, tuples, str, numbers, bool, None):
:func:`save_checkpoint` converts NumPy values (the NumPy RNG state) to tensors / Python numbers and
refuses anything else, and refuses a state with a NaN or infinite tensor (a diverged run never
overwrites a good checkpoint). Files are written to a temporary file in the same folder (after a
free-space check) and moved into place with ``os.replace``, so a crash never leaves a half-written
checkpoint behind.

:func:`load_checkpoint` reads with ``torch.load(weights_only=True)``: a file that holds other
Python objects (a pickle that could run code) is refused with a :class:`CheckpointError` and
nothing in it is executed. ``trust=True`` (``--trust-checkpoint`` on the command line) loads such a
file with full pickle, for files you trust only. Checkpoints of earlier gspdml versions (a NumPy
array in the RNG state) load safely as well.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gspdml.errors import CheckpointError

__all__ = [
    "FORMAT",
    "NonFiniteState",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "run_dir_of",
    "load_resume_checkpoint",
    "load_model_from_checkpoint",
    "find_non_finite",
    "plain_state",
    "state_nbytes",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "TRUST_HINT",
]

FORMAT = "gspdml-checkpoint"
VERSION = 1

#: how the unsafe opt-in is named in error messages
TRUST_HINT = ("if you trust this file, load it anyway with --trust-checkpoint (Python: trust=True), "
              "which unpickles it fully and can run code stored in it")


class NonFiniteState(CheckpointError):
    """A state to save holds a NaN or infinite tensor; ``entry`` names it (``model['bn.running_var']``)."""

    def __init__(self, message: str, entry: str) -> None:
        super().__init__(message)
        self.entry = entry


# -------------------------------------------------------------------------------------- checking
def _walk_tensors(obj: Any, where: str):
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_tensors(v, f"{where}[{k!r}]" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{where}[{i}]")


def find_non_finite(state: Any, where: str = "") -> str | None:
    """The first entry of ``state`` (nested dicts/lists of tensors) holding a NaN or infinite
    floating-point value, as ``model['bn.running_var']``; ``None`` when every tensor is finite."""
    for name, t in _walk_tensors(state, where):
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            return name
    return None


def state_nbytes(state: Any) -> int:
    """The bytes of the tensors in ``state`` (about the size of its checkpoint file)."""
    return sum(t.numel() * t.element_size() for _, t in _walk_tensors(state, ""))


_PLAIN = (str, int, float, bool, type(None), bytes, torch.dtype, torch.device, torch.Size)


def plain_state(obj: Any, where: str = "") -> Any:
    """``obj`` with NumPy arrays as tensors and NumPy scalars as Python numbers; CheckpointError
    for any other object that is not a tensor or a plain value (``weights_only`` loading reads
    only those)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.ndarray):
        arr = obj.astype(np.int64) if obj.dtype == np.uint32 else obj
        return torch.from_numpy(np.ascontiguousarray(arr).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) is not dict else {}
        for k, v in obj.items():
            out[k] = plain_state(v, f"{where}[{k!r}]" if where else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise CheckpointError(
        f"checkpoint entry {where or 'state'} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint "
        "holds only tensors and plain values (dict, list, tuple, str, numbers, bool, None)"
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------- saving
def save_checkpoint(state: dict, path: str | os.PathLike, *, check_finite: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Before anything is written: the state is converted to tensors and plain values
    (:func:`plain_state`), checked finite (:class:`NonFiniteState` naming the entry, unless
    ``check_finite`` is false because the caller checked) and the folder's free space is compared
    with the state's size (x 1.1); on any failure the previous file at ``path`` is untouched.
    """
    path = Path(path)
    state = plain_state({"format": FORMAT, "version": VERSION, **state})
    if check_finite:
        bad = find_non_finite(state)
        if bad is not None:
            raise NonFiniteState(f"refusing to write {str(path)!r}: {bad} holds NaN or infinite values", bad)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the checkpoint folder {str(path.parent)!r}: {exc.strerror or exc}") from None
    needed = int(state_nbytes(state) * 1.1)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise CheckpointError(
            f"not enough free disk space to write {str(path)!r}: the checkpoint needs about {_mb(needed)} and "
            f"{str(path.parent)!r} has {_mb(free)} free; free some space, then resume the run"
        )
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


# --------------------------------------------------------------------------------------- loading
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


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run folder a checkpoint file belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == "checkpoints" else folder


def _legacy_numpy_globals() -> list:
    """What a checkpoint written before checkpoints held only tensors needs beyond weights (its
    NumPy RNG state is a NumPy array): NumPy's array reconstruction, which builds plain arrays and
    calls nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_error(path: Path, exc: Exception, trust: bool) -> CheckpointError:
    """The CheckpointError for a failed ``torch.load``: objects beyond weights (refused unless
    trusted), or a file that is not a readable torch checkpoint."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if not trust and ("Unsupported global" in text or found):
        what = f" (it imports {found.group(1)})" if found else ""
        return CheckpointError(
            f"{str(path)!r} was not loaded: it holds Python objects beyond tensors and plain values{what}, and "
            f"unpickling them could run code; gspdml checkpoints never do. {TRUST_HINT}"
        )
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = reason.group(1).strip() if reason else (text.strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(f"cannot read checkpoint {str(path)!r}: {detail} (a corrupt, truncated or non-torch file)")


def load_checkpoint(path_or_run_dir: str | os.PathLike, map_location: Any = "cpu", prefer: str = "best",
                    *, trust: bool = False) -> dict:
    """Load a gspdml checkpoint (file or run folder) safely and check its format.

    ``torch.load(weights_only=True)``: a file holding Python objects beyond tensors and plain
    values is refused (CheckpointError) without running anything in it; ``trust=True`` loads
    such a file with full unpickling (only for files you trust).
    """
    path = resolve_checkpoint(path_or_run_dir, prefer=prefer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols of foreign files
            if trust:
                state = torch.load(path, map_location=map_location, weights_only=False)
            else:
                with torch.serialization.safe_globals(_legacy_numpy_globals()):
                    state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupted/truncated/not a torch file, or objects beyond weights
        raise _load_error(path, exc, trust) from None
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


def load_resume_checkpoint(path_or_run_dir: str | os.PathLike, *, trust: bool = False) -> tuple[dict, Path]:
    """The full training checkpoint to resume from (a run folder's ``last.pt``, or a file) and the
    run folder it belongs to."""
    state = load_checkpoint(path_or_run_dir, map_location="cpu", prefer="last", trust=trust)
    if "optimizer" not in state:
        raise CheckpointError(
            f"{state['path']!r} holds only model weights (a best.pt); resume from checkpoints/last.pt"
        )
    return state, run_dir_of(state["path"])


def load_model_from_checkpoint(path_or_run_dir: str | os.PathLike, map_location: Any = "cpu", *,
                               trust: bool = False):
    """Rebuild the embedding model stored in a checkpoint (or a run folder's best/last checkpoint).

    The model is built from the config stored in the checkpoint (pretrained weights are not
    needed: the stored state dict replaces them) and put in eval mode. A checkpoint whose weights
    hold NaN or infinite values (a diverged run) is refused. ``trust``: see :func:`load_checkpoint`.

    Returns:
        ``(model, cfg, extra)`` where ``cfg`` is the :class:`~gspdml.config.TrainConfig` and
        ``extra`` a dict with ``path, step, epoch, metrics, num_classes`` and, when present,
        ``zero_shot`` (the L_ZS module's state dict, e.g. its class-embedding table).
    """
    from gspdml.config import config_from_dict, upgrade_stored_config
    from gspdml.models import build_model

    state = load_checkpoint(path_or_run_dir, map_location=map_location, trust=trust)
    try:
        cfg = config_from_dict(upgrade_stored_config(state["config"]))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {state['path']!r} holds an invalid config: {exc}") from None
    bad = find_non_finite({"model": state.get("model"), "zero_shot": state.get("zero_shot")})
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {state['path']!r} holds NaN or infinite values in {bad}: it was saved from a diverged "
            "run and its embeddings would be meaningless; use an earlier checkpoint or retrain with a lower optim.lr"
        )
    cfg.model.pretrained = None
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
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


# -------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and (when available) all CUDA RNG states, as tensors and plain
    values (the NumPy MT19937 key as an int64 tensor)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (str(kind), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (also reads the NumPy array of older checkpoints)."""
    random.setstate(state["python"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
