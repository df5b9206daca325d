"""Checkpoints that cannot run code and cannot be lost (issue 11): ``weights_only`` loading of every
user-supplied path, a checkpoint of tensors and plain values only, an explicit unsafe opt-in,
orphaned temporary files removed on the next start, a free-space check before each write."""
from __future__ import annotations

import collections
import random
import shutil

import numpy as np
import pytest
import torch

from engine_fixtures import blob_datasets, single_thread, tiny_config  # noqa: F401
from gspdml.cli import main
from gspdml.config import to_dict
from gspdml.engine.checkpoint import (capture_rng_state, load_checkpoint, load_model_from_checkpoint,
                                      restore_rng_state, save_checkpoint)
from gspdml.engine.trainer import train
from gspdml.errors import CheckpointError


class _Payload:
    """Unpickling this creates ``marker`` (what an attacker's ``__reduce__`` would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """A run folder whose best.pt and last.pt look like gspdml checkpoints but carry a payload."""
    marker = tmp_path / "payload_ran"
    run = tmp_path / "evil_run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = tiny_config(None)
    for name in ("best.pt", "last.pt"):
        torch.save({"format": "gspdml-checkpoint", "version": 1, "config": to_dict(cfg), "model": _Payload(marker),
                    "optimizer": {}, "step": 1}, run / "checkpoints" / name)
    return run, marker


def test_a_crafted_pickle_runs_nothing_and_gets_a_clear_error(crafted, tmp_path, capsys):
    run, marker = crafted
    with pytest.raises(CheckpointError, match=r"beyond tensors.*--trust-checkpoint"):
        load_model_from_checkpoint(run)
    with pytest.raises(CheckpointError, match="could run code"):
        train(tiny_config(tmp_path, ["train.max_steps=2"]), progress=False, datasets=blob_datasets(), resume=run)
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert not marker.exists()
    # the explicit opt-in does unpickle it (which is why it is opt-in)
    load_checkpoint(run, trust=True)
    assert marker.exists()


def test_a_training_checkpoint_holds_only_tensors_and_plain_values(tmp_path):
    res = train(tiny_config(tmp_path, ["train.max_steps=2"]), progress=False, datasets=blob_datasets())
    path = res.run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)  # plain torch, no allow-listed globals

    plain = (str, int, float, bool, type(None), torch.Tensor)

    def walk(obj, where):
        if isinstance(obj, (dict, collections.OrderedDict)):
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
        else:
            assert isinstance(obj, plain), (where, type(obj))

    walk(state, "ckpt")
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(2).tolist(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])  # plain torch, nothing allowed extra
    got = (random.random(), np.random.rand(3).tolist(), np.random.randn(2).tolist(), torch.rand(3))
    assert got[:3] == expected[:3]
    torch.testing.assert_close(got[3], expected[3], rtol=0, atol=0)


def test_checkpoints_of_earlier_versions_still_load_safely(tmp_path):
    """Earlier checkpoints stored the NumPy RNG state as an array: loaded with weights_only."""
    np.random.seed(11)
    legacy = {"format": "gspdml-checkpoint", "version": 1,
              "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    torch.save(legacy, tmp_path / "old.pt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "old.pt", weights_only=True)  # needs NumPy globals: the legacy layout
    expected = np.random.rand(4)
    np.random.seed(0)
    restore_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"])
    np.testing.assert_array_equal(np.random.rand(4), expected)


def test_orphaned_temporary_files_are_removed_on_the_next_start(tmp_path):
    cfg = tiny_config(tmp_path, ["train.max_steps=2"])
    run = train(cfg, progress=False, datasets=blob_datasets()).run_dir
    orphans = [run / "checkpoints" / ".last.pt.k9x2_a.tmp", run / "checkpoints" / ".best.pt.zz81.tmp",
               run / ".metrics.json.tmp", run / ".config.yaml.tmp"]
    for p in orphans:
        p.write_bytes(b"\0" * 50_000)  # what kill -9 during a write leaves behind
    keep = run / "checkpoints" / "notes.tmp"  # not ours: left alone
    keep.write_text("mine")
    res = train(tiny_config(tmp_path, ["train.max_steps=3"]), progress=False, datasets=blob_datasets(), resume=run)
    assert res.steps == 3
    assert not any(p.exists() for p in orphans) and keep.exists()
    log = (run / "log.txt").read_text()
    assert "removed 4 orphaned temporary file(s) (0.2 MB)" in log and ".last.pt.k9x2_a.tmp" in log


def test_a_checkpoint_write_checks_free_disk_space_first(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"step": 1, "w": torch.zeros(1000)}, path)
    before = path.read_bytes()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=3_000))
    with pytest.raises(CheckpointError, match=r"not enough free disk space .*needs about 0\.4 MB.*ck.*has 0\.0 MB free"):
        save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)  # 400 kB
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    save_checkpoint({"step": 3, "w": torch.zeros(10)}, path)  # 40 bytes fit in 3 kB
    assert load_checkpoint(path)["step"] == 3


def test_a_full_disk_during_training_stops_with_a_clear_error(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1_000))
    cfg = tiny_config(tmp_path, ["train.max_steps=3", "train.checkpoint_every_steps=2"])
    with pytest.raises(CheckpointError, match="not enough free disk space"):
        train(cfg, progress=False, datasets=blob_datasets())
    assert "not enough free disk space" in (tmp_path / "tiny" / "log.txt").read_text()
