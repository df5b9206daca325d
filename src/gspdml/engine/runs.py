"""The run folder of one training run, its lock, and :class:`RunResult` (what ``train`` returns).

::

    <output_dir>/<name>/
        config.yaml        the resolved config (every key, defaults included), written once per start
        metrics.json       {"best": {...}, "final": {...}, "validation": [...], "steps": N}
        metrics.csv        one row per logged step / validation (step, epoch, loss, lr, val_*)
        log.txt            the training log (errors of a failed run included)
        curves.png         training loss and validation MAP@R against the step
        checkpoints/last.pt, checkpoints/best.pt
        .lock              while a process trains in the folder: its PID, host and start time

A folder is created (:func:`new_run_dir`, an atomic ``mkdir``) only once the whole run has been
validated and built, so a run that fails before that leaves nothing behind, and a resume that fails
leaves its folder as it was. :class:`RunLock` keeps a second process out of a folder in use.

The outcomes of a run that are not plain errors live here too: :class:`Interrupted` (SIGINT or
SIGTERM: the checkpoint was written, the run can be resumed), :class:`TrainingDiverged` (a
non-finite or exploding loss, gradient or state: the last good checkpoint is kept) and
:class:`RunFolderLocked`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gspdml.errors import CheckpointError, InputError
from gspdml.io import write_json

if TYPE_CHECKING:
    from torch import nn

    from gspdml.config import TrainConfig

__all__ = [
    "RunResult",
    "RunFolder",
    "RunLock",
    "RunFolderLocked",
    "TrainingDiverged",
    "Interrupted",
    "new_run_dir",
    "resume_command",
    "console_logging",
    "LOGGER_NAME",
]

LOGGER_NAME = "gspdml.engine"


class RunFolderLocked(CheckpointError):
    """Another process trains in this run folder (its ``.lock`` names it)."""


class TrainingDiverged(InputError):
    """The loss, the gradient norm or the state to checkpoint became non-finite or exploded; the
    message names the step and the last good checkpoint (never overwritten with the bad state)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after finishing its current step.

    A ``KeyboardInterrupt`` (``except Exception`` does not swallow it). ``exit_code`` is 130
    (SIGINT) or 143 (SIGTERM), ``checkpoint`` the ``last.pt`` written at the stop (``None`` when
    the run writes no checkpoints), ``run_dir`` the run folder; ``str(exc)`` says where the
    checkpoint is and gives the exact resume command.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path | None) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.step = step
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        super().__init__(self.message())

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            why = "no run folder (output_dir is null)" if self.run_dir is None else "train.save_checkpoints is false"
            return f"interrupted by {name} after step {self.step}; no checkpoint was written ({why}), so it cannot be resumed"
        return (f"interrupted by {name} after step {self.step}; checkpoint written: {self.checkpoint}\n"
                f"resume with: {resume_command(self.run_dir)}")

    def __str__(self) -> str:
        return self.message()


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command line that continues the run in ``run_dir`` exactly."""
    import shlex

    return f"gspdml train --resume {shlex.quote(str(run_dir))}"


def _mkdir_error(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot create the run folder {str(path)!r}: {exc.strerror or exc} "
                      "(choose another output_dir / --out: an existing, writable folder or a new path)")


def new_run_dir(output_dir: str | os.PathLike, name: str) -> Path:
    """Create and return a new folder ``output_dir/name``, or ``name_2``, ``name_3``, ... when
    taken. Race-free: each candidate is claimed with one atomic ``mkdir``, so concurrent callers
    always get distinct folders; an existing folder (even an empty one) is never reused."""
    base = Path(output_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _mkdir_error(base, exc) from None
    i = 1
    while True:
        cand = base / (name if i == 1 else f"{name}_{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            i += 1
        except OSError as exc:
            raise _mkdir_error(cand, exc) from None


# ------------------------------------------------------------------------------------------ lock
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _lock_fd(fd: int) -> bool:
    """Take a non-blocking exclusive OS lock on the open file ``fd``; False when another process holds it.
    POSIX record locks (``lockf``): per process, released by the kernel when the process dies,
    not inherited by forked DataLoader workers."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        raw += chunk
    try:
        info = json.loads(raw.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder_text(info: dict) -> str:
    return f"PID {info.get('pid', '?')}@{info.get('host', '?')} (since {info.get('since', '?')})"


class RunLock:
    """``<run>/.lock``: one training process per run folder.

    :meth:`acquire` writes ``{"pid", "host", "since"}`` and holds an OS lock on the file; a
    second acquirer (another process, or this one again) gets :class:`RunFolderLocked` naming the
    holder. A lock file left by a process that died on this host (kill -9, a crash) is taken over,
    and :attr:`note` says so. A lock file written on another host is not taken over (its process
    cannot be checked from here): the error says to delete it once that run is gone.
    :meth:`release` (idempotent) deletes the file; the OS drops the lock if the process dies.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.note: str | None = None
        self._fd: int | None = None
        self._key = os.path.realpath(self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, info: dict, extra: str = "") -> RunFolderLocked:
        return RunFolderLocked(
            f"run folder {str(self.run_dir)!r} is in use by {_holder_text(info)}{extra}; wait for that run to "
            f"finish or stop it (lock file {self.path})"
        )

    def acquire(self) -> RunLock:
        with _HELD_GUARD:  # one acquisition at a time in this process (OS record locks are per process)
            if self._key in _HELD:  # checked before touching the file: closing it would drop our OS lock
                raise self._refuse({"pid": os.getpid(), "host": socket.gethostname(),
                                    "since": "earlier in this process"})
            fd = self._acquire_fd()
            _HELD.add(self._key)
            self._fd = fd
        return self

    def _acquire_fd(self) -> int:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise CheckpointError(f"cannot create the lock file {str(self.path)!r}: {exc.strerror or exc}") from None
            if not _lock_fd(fd):
                info = _read_holder(fd)
                os.close(fd)
                raise self._refuse(info)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (deleted) the file meanwhile: lock the new one
                os.close(fd)
                continue
            info = _read_holder(fd)
            if info.get("pid") is not None:
                if info.get("host") != me["host"]:
                    os.close(fd)
                    raise self._refuse(info, "; it was written on another host, so it is not taken over: "
                                             f"if that run is no longer running, delete {self.path}")
                if int(info["pid"]) != me["pid"] and _pid_alive(int(info["pid"])):
                    os.close(fd)
                    raise self._refuse(info, " (that process is alive)")
                self.note = f"took over the stale lock of {_holder_text(info)}: that process is gone"
            record = {**me, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
            return fd
        raise CheckpointError(f"cannot lock {str(self.path)!r}: it keeps being replaced by other processes")

    def release(self) -> None:
        """Delete the lock file and drop the OS lock (a no-op when not held)."""
        with _HELD_GUARD:
            if self._fd is None:
                return
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None
                _HELD.discard(self._key)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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


#: temporary files of our atomic writers (an interrupted write can leave them behind)
_TMP_PATTERNS = (("checkpoints", ".*.pt.*.tmp"), (".", ".metrics.csv.tmp"), (".", ".metrics.json.tmp"),
                 (".", ".config.yaml.tmp"))


class RunFolder:
    """Writes the files of one run; a no-op object when ``path`` is None (in-memory runs).

    :meth:`open` is the commit point of a run: lock the folder (``lock``, or a new :class:`RunLock`),
    log to ``log.txt``, remove temporary files left by interrupted writes, write ``config.yaml``
    (atomically). Nothing touches the folder before it.
    """

    def __init__(self, path: Path | None, logger: logging.Logger | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.lock: RunLock | None = None
        self._handler: logging.Handler | None = None

    @property
    def checkpoints(self) -> Path | None:
        return None if self.path is None else self.path / "checkpoints"

    def open(self, cfg, lock: RunLock | None = None) -> RunFolder:
        """Lock, start ``log.txt``, clean up orphaned temporary files, write ``config.yaml``."""
        if self.path is None:
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _mkdir_error(self.path, exc) from None
        if not self.path.is_dir():
            raise InputError(f"the run folder {str(self.path)!r} is not a folder")
        self.lock = lock if lock is not None and lock.held else RunLock(self.path).acquire()
        try:
            try:
                self._handler = logging.FileHandler(self.path / "log.txt", mode="a")
            except OSError as exc:
                raise InputError(f"cannot write {str(self.path / 'log.txt')!r}: {exc.strerror or exc}") from None
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(self._handler)
            if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
                self.logger.setLevel(logging.INFO)
            if self.lock.note:
                self.logger.warning("%s", self.lock.note)
            self.remove_orphans()
            self.write_config(cfg)
        except BaseException:
            self.close()
            raise
        return self

    def remove_orphans(self) -> list[Path]:
        """Delete the temporary files that interrupted atomic writes left (logged); returns them."""
        if self.path is None:
            return []
        found = sorted({p for sub, pattern in _TMP_PATTERNS for p in (self.path / sub).glob(pattern) if p.is_file()})
        size = 0
        for p in found:
            size += p.stat().st_size
            p.unlink()
        if found:
            names = ", ".join(str(p.relative_to(self.path)) for p in found)
            self.logger.info("removed %d orphaned temporary file(s) (%.1f MB) left by interrupted writes: %s",
                             len(found), size / 1e6, names)
        return found

    def write_config(self, cfg) -> None:
        """``config.yaml``, atomically (temporary file + ``os.replace``)."""
        if self.path is None:
            return
        import yaml

        from gspdml.config import to_dict

        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        tmp = self.path / ".config.yaml.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / "config.yaml")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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

    def record(self, level: int, message: str, exc_info: bool = False) -> None:
        """Write ``message`` to ``log.txt`` only (the console shows errors its own way)."""
        if self._handler is None:
            return
        record = self.logger.makeRecord(self.logger.name, level, __file__, 0, message, (), None)
        if exc_info:
            import sys

            record.exc_info = sys.exc_info()
        self._handler.handle(record)

    def close(self) -> None:
        """Stop logging to ``log.txt`` and release the lock (every exit path calls this)."""
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a message is written (tests and
    notebooks replace it; a handler bound to an old, closed stream would fail)."""

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console_logging(level: int = logging.INFO) -> None:
    """Show gspdml's log messages on stderr (CLI use); other libraries' loggers stay quiet."""
    root = logging.getLogger("gspdml")
    if not any(getattr(h, "_gspdml_console", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._gspdml_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
