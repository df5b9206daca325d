"""Exact resume and checkpoint files: an interrupted + resumed run equals an uninterrupted one."""
from __future__ import annotations

import os

import pytest
import torch

from engine_fixtures import Blobs, single_thread, tiny_config  # noqa: F401
from gspdml.engine.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from gspdml.engine.trainer import train
from gspdml.errors import CheckpointError


class Interrupt(Exception):
    pass


def _data():
    # augment=True: items draw noise from the global torch RNG, so the RNG state must be restored
    return {"train": Blobs(12, 6, seed=0, augment=True), "test": Blobs(6, 4, seed=1, first_class=50)}


RESUME_OVERRIDES = [
    "data.fold=0", "train.eval_every_steps=3", "train.checkpoint_every_steps=1", "train.max_steps=10",
    "optim.scheduler=cosine", "optim.warmup_steps=2", "loss.name=PAnchor", "model.freeze_bn=false",
]


def _state(res):
    params = {f"model.{k}": v.detach().clone() for k, v in res.model.state_dict().items()}
    params.update({f"loss.{k}": v.detach().clone() for k, v in res.extras["loss"].state_dict().items()})
    if res.extras["zero_shot"] is not None:
        params.update({f"zs.{k}": v.detach().clone() for k, v in res.extras["zero_shot"].state_dict().items()})
    return params


GSP_ZS = ["model.pooling=gsp", "model.pooling_kwargs={num_prototypes: 4, mu: 0.5, eps: 5.0}",
          "loss.zero_shot.enabled=true", "loss.name=XBM", "loss.kwargs={warmup_iters: 2, memory_size: 24}"]


@pytest.mark.parametrize("extra", [[], GSP_ZS], ids=["gap-panchor", "gsp-zeroshot-xbm"])
def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path, extra):
    cfg_a = tiny_config(tmp_path / "a", RESUME_OVERRIDES + ["eval.use_best=false"] + extra)
    full = train(cfg_a, progress=False, datasets=_data())
    assert full.steps == 10 and full.epochs >= 2  # crosses epoch boundaries

    cfg_b = tiny_config(tmp_path / "b", RESUME_OVERRIDES + ["eval.use_best=false"] + extra)

    def crash(info):
        if info["step"] == 6:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(cfg_b, progress=False, datasets=_data(), callback=crash)
    run_b = tmp_path / "b" / "tiny"
    ckpt = load_checkpoint(run_b, prefer="last")
    assert ckpt["step"] == 5 and 0 < ckpt["batch_in_epoch"]  # mid-epoch
    resumed = train(cfg_b, progress=False, datasets=_data(), resume=run_b)
    assert resumed.run_dir == run_b and resumed.steps == 10

    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert resumed.best_metrics == pytest.approx(full.best_metrics)
    assert resumed.final_metrics == pytest.approx(full.final_metrics)
    losses_a = [r["loss"] for r in full.history if "loss" in r]
    losses_b = [r["loss"] for r in resumed.history if "loss" in r]
    assert losses_b == pytest.approx(losses_a, abs=1e-6)


def test_resume_from_a_finished_run_extends_it(tmp_path):
    cfg = tiny_config(tmp_path, ["train.max_steps=3", "train.checkpoint_every_steps=0"])
    first = train(cfg, progress=False, datasets=_data())
    longer = tiny_config(tmp_path, ["train.max_steps=5", "train.checkpoint_every_steps=0"])
    res = train(longer, progress=False, datasets=_data(), resume=first.run_dir / "checkpoints" / "last.pt")
    assert res.steps == 5 and [r["step"] for r in res.history if "loss" in r] == [1, 2, 3, 4, 5]


def test_resume_needs_a_full_checkpoint_and_a_matching_config(tmp_path):
    cfg = tiny_config(tmp_path, ["train.max_steps=2", "data.fold=0", "train.eval_every_steps=1"])
    res = train(cfg, progress=False, datasets=_data())
    with pytest.raises(CheckpointError, match="only model weights"):
        train(cfg, progress=False, datasets=_data(), resume=res.run_dir / "checkpoints" / "best.pt")
    other = tiny_config(tmp_path, ["train.max_steps=4", "data.fold=0", "model.local_dim=16"])
    with pytest.raises(CheckpointError, match="does not match this config"):
        train(other, progress=False, datasets=_data(), resume=res.run_dir)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"step": 1, "payload": torch.arange(3)}, path)
    real_save = torch.save

    def broken_save(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1  # the old file is intact
    assert os.listdir(path.parent) == ["last.pt"]  # no temp file left behind


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "empty_run")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a gspdml checkpoint"):
        load_checkpoint(foreign)
