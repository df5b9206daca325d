"""Run folders that cannot be corrupted (issue 11): nothing is written before a run is validated
and built, a failed resume leaves the folder byte-identical, a failed run leaves no empty folder,
errors reach log.txt, a lock keeps a second process out, ``new_run_dir`` is race-free."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine_fixtures import Blobs, blob_datasets, digits_cli_spec, single_thread, tiny_config, write_yaml  # noqa: F401
from gspdml.cli import main
from gspdml.engine.runs import RunFolderLocked, RunLock, new_run_dir
from gspdml.engine.trainer import train
from gspdml.errors import CheckpointError, ConfigError, DataError, GspdmlError


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (the lock file included, were it left behind)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path):
    """A 2-step run with checkpoints, validation (best.pt) and its config."""
    cfg = tiny_config(tmp_path, ["train.max_steps=2", "data.fold=0", "train.eval_every_steps=1"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    return res.run_dir


@pytest.mark.parametrize("overrides, error", [
    (["model.local_dim=16"], CheckpointError),                       # a config whose model does not match
    (["model.pooling=gps"], ConfigError),                            # a bad override (unknown pooling)
    (["data.samples_per_class=2"], CheckpointError),                 # the checkpoint's sampler does not match
], ids=["mismatched-config", "bad-override", "mismatched-checkpoint"])
def test_failed_resume_leaves_the_folder_byte_identical(finished_run, tmp_path, overrides, error):
    before = _hashes(finished_run)
    assert {"config.yaml", "log.txt", "checkpoints/last.pt", "checkpoints/best.pt"} <= set(before)
    cfg = tiny_config(tmp_path, ["train.max_steps=4", "data.fold=0", "train.eval_every_steps=1"] + overrides)
    with pytest.raises(error):
        train(cfg, progress=False, datasets=blob_datasets(), resume=finished_run)
    assert _hashes(finished_run) == before


def test_failed_cli_resume_with_a_mismatched_config_leaves_the_folder_byte_identical(tmp_path, capsys):
    spec = digits_cli_spec(tmp_path, eval={"test_at_end": False})
    del spec["optim"], spec["train"]["log_every"]  # the config this test was written with
    good = write_yaml(tmp_path / "good.yaml", spec)
    assert main(["train", "-c", str(good), "--no-progress"]) == 0
    run = tmp_path / "runs" / "digits"
    before = _hashes(run)
    spec["model"]["local_dim"] = 16
    other = write_yaml(tmp_path / "other.yaml", spec)
    capsys.readouterr()
    assert main(["train", "-c", str(other), "--resume", str(run), "--no-progress"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "model.pooling=gps", "--no-progress"]) == 2
    assert "gps" in capsys.readouterr().err
    assert _hashes(run) == before


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    bad = tiny_config(tmp_path, ["data.classes_per_batch=20"])  # more classes per batch than exist
    for _ in range(3):
        with pytest.raises(ConfigError):
            train(bad, progress=False, datasets=blob_datasets())
    assert list(tmp_path.iterdir()) == []
    ok = train(tiny_config(tmp_path, ["train.max_steps=1"]), progress=False, datasets=blob_datasets())
    assert ok.run_dir == tmp_path / "tiny"  # no tiny_2, tiny_3 churn


class _FailsLater(Blobs):
    """Raises a DataError once ``after`` items have been read (a corrupt file found mid-run)."""

    def __init__(self, after: int) -> None:
        super().__init__(12, 6, seed=0)
        self.after, self.reads = after, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.after:
            raise DataError(f"image {i} of the test dataset cannot be decoded")
        return super().__getitem__(i)


def test_the_error_of_a_run_that_fails_after_its_folder_exists_is_in_log_txt(tmp_path):
    cfg = tiny_config(tmp_path, ["train.max_steps=10"])
    with pytest.raises(DataError, match="cannot be decoded"):
        train(cfg, progress=False, datasets={"train": _FailsLater(after=30), "test": None})
    log = (tmp_path / "tiny" / "log.txt").read_text()
    assert "step 2 " in log  # it trained a little first
    assert "ERROR run failed: image" in log and "cannot be decoded" in log
    assert not (tmp_path / "tiny" / ".lock").exists()  # released on the error path


_HOLD = """
import sys, time
from gspdml.engine.runs import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_a_held_run_folder_is_refused(finished_run):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(finished_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _hashes(finished_run)
        cfg = tiny_config(finished_run.parent, ["train.max_steps=4", "data.fold=0", "train.eval_every_steps=1"])
        with pytest.raises(RunFolderLocked) as exc:
            train(cfg, progress=False, datasets=blob_datasets(), resume=finished_run)
        msg = str(exc.value)
        assert f"PID {holder.pid}@{socket.gethostname()}" in msg and "since 20" in msg
        assert _hashes(finished_run) == before  # the holder's lock file untouched, nothing else written
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file stays, and is taken over with a note
    assert json.loads((finished_run / ".lock").read_text())["pid"] == holder.pid
    cfg = tiny_config(finished_run.parent, ["train.max_steps=3", "data.fold=0", "train.eval_every_steps=1"])
    res = train(cfg, progress=False, datasets=blob_datasets(), resume=finished_run)
    assert res.steps == 3
    log = (finished_run / "log.txt").read_text()
    assert f"took over the stale lock of PID {holder.pid}@{socket.gethostname()}" in log
    assert not (finished_run / ".lock").exists()


def test_the_lock_refuses_this_process_too_and_another_hosts_lock_is_not_taken_over(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderLocked, match=f"PID {os.getpid()}@"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "2026-01-01"}))
    with pytest.raises(RunFolderLocked, match=r"PID 1@elsewhere.example .*another host.*delete"):
        RunLock(tmp_path).acquire()


def test_two_concurrent_resumes_one_is_refused(finished_run):
    """Both threads resume the same folder at once: exactly one trains, the other is refused."""
    barrier = threading.Barrier(2)
    outcomes: list = []

    def resume():
        cfg = tiny_config(finished_run.parent, ["train.max_steps=30", "data.fold=0", "train.eval_every_steps=10"])
        barrier.wait()
        try:
            outcomes.append(train(cfg, progress=False, datasets=blob_datasets(), resume=finished_run))
        except GspdmlError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [o for o in outcomes if isinstance(o, RunFolderLocked)]
    done = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(refused) == 1 and len(done) == 1, outcomes
    assert done[0].steps == 30


def test_new_run_dir_gives_30_concurrent_callers_30_distinct_folders(tmp_path):
    barrier = threading.Barrier(30)
    got: list[Path] = []

    def claim():
        barrier.wait()
        folder = new_run_dir(tmp_path / "runs", "same")
        (folder / "config.yaml").write_text(str(threading.get_ident()))  # what a run writes first
        got.append(folder)

    threads = [threading.Thread(target=claim) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 30 and len(set(got)) == 30
    assert {p.name for p in got} == {"same"} | {f"same_{i}" for i in range(2, 31)}


_CLAIM = """
import sys, time
from gspdml.engine.runs import new_run_dir
start = float(sys.argv[2])
while time.time() < start:
    pass
print(new_run_dir(sys.argv[1], "same"))
"""


def test_new_run_dir_is_race_free_across_processes(tmp_path):
    start = f"{time.time() + 2.0:.3f}"  # every process imports first, then all claim at once
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM, str(tmp_path), start], stdout=subprocess.PIPE, text=True)
             for _ in range(30)]
    got = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(got)) == 30


def test_an_unwritable_output_dir_is_a_clear_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(GspdmlError, match="cannot create the run folder"):
        train(tiny_config(a_file, ["train.max_steps=1"]), progress=False, datasets=blob_datasets())
