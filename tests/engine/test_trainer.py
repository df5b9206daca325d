"""End-to-end training on tiny in-memory data: run folder, metrics, checkpoints, early stopping."""
from __future__ import annotations

import json

import pytest
import torch

from engine_fixtures import Blobs, blob_datasets, single_thread, tiny_config  # noqa: F401
from gspdml.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from gspdml.engine.trainer import train
from gspdml.engine.evaluate import embed_dataset
from gspdml.errors import CheckpointError, ConfigError
from gspdml.evaluation.metrics import compute_retrieval_metrics


def test_train_writes_a_complete_run(tmp_path):
    cfg = tiny_config(tmp_path, ["data.fold=1", "train.eval_every_steps=3", "train.checkpoint_every_steps=2",
                                 "train.plot=true"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    run = res.run_dir
    assert run == tmp_path / "tiny" and res.steps == 6
    for name in ("config.yaml", "metrics.json", "metrics.csv", "log.txt", "curves.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 6 and len(summary["validation"]) == 2
    assert [r["step"] for r in summary["validation"]] == [3, 6]
    best_row = max(summary["validation"], key=lambda r: r["val_map_at_r"])
    assert res.best_metrics["map_at_r"] == pytest.approx(best_row["val_map_at_r"])
    assert res.best_metrics["step"] == best_row["step"]
    assert [r["step"] for r in res.history if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("step,epoch,loss,lr")
    # final metrics = the test set embedded by the returned (best-validation) model
    emb, labels = embed_dataset(res.model, blob_datasets()["test"], progress=False)
    assert res.final_metrics == pytest.approx(compute_retrieval_metrics(emb, labels))
    # the checkpoint rebuilds the same model from its stored config
    model, cfg2, extra = load_model_from_checkpoint(run)
    assert extra["step"] == res.best_metrics["step"] and cfg2.data.fold == 1
    emb2, _ = embed_dataset(model, blob_datasets()["test"], progress=False)
    torch.testing.assert_close(emb2, emb)
    assert "training tiny" in (run / "log.txt").read_text()


def test_fold_split_trains_on_three_quarters_of_the_classes(tmp_path):
    cfg = tiny_config(None, ["data.fold=0", "train.max_steps=1", "train.eval_every_steps=1"])
    res = train(cfg, progress=False, datasets={"train": Blobs(12, 6)}, )
    # 12 classes -> validation on classes 0..2, training on 9 classes
    assert res.extras["num_classes"] == 9
    assert res.final_metrics == {}  # no test set given


def test_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = train(tiny_config(None, ["train.max_steps=2"]), progress=False, datasets=blob_datasets())
    assert res.run_dir is None and list(tmp_path.iterdir()) == []
    assert set(res.final_metrics) >= {"map_at_r", "r_precision", "precision_at_1", "recall_at_1"}


def test_no_checkpoints_when_disabled(tmp_path):
    cfg = tiny_config(tmp_path, ["train.save_checkpoints=false", "data.fold=0", "train.eval_every_steps=2"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    assert not (res.run_dir / "checkpoints").exists()
    assert (res.run_dir / "metrics.json").is_file()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model_from_checkpoint(res.run_dir)


def test_training_improves_separation():
    # test = new samples of the training classes: training must separate them better
    cfg = tiny_config(None, ["train.max_steps=40"])
    data = {"train": Blobs(12, 6, seed=0), "test": Blobs(12, 4, seed=0, noise_seed=5)}
    before = train(tiny_config(None, ["train.max_steps=1", "optim.lr=1e-9"]), progress=False, datasets=data)
    after = train(cfg, progress=False, datasets=data)
    assert after.final_metrics["map_at_r"] > before.final_metrics["map_at_r"] + 0.15


def test_early_stopping_counts_validations_without_improvement(tmp_path):
    # lr ~ 0: the validation score never improves after the first validation
    cfg = tiny_config(None, ["optim.lr=1e-30", "model.freeze_bn=true", "data.fold=0", "train.eval_every_steps=1", "train.patience=2",
                             "train.max_steps=50"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    assert res.stopped_early and res.steps == 3  # best at step 1, no improvement at 2 and 3
    assert res.best_metrics["step"] == 1


def test_new_run_folder_does_not_overwrite(tmp_path):
    cfg = tiny_config(tmp_path, ["train.max_steps=1", "train.save_checkpoints=false"])
    a = train(cfg, progress=False, datasets=blob_datasets())
    b = train(cfg, progress=False, datasets=blob_datasets())
    assert a.run_dir.name == "tiny" and b.run_dir.name == "tiny_2"


def test_user_errors_are_clear():
    with pytest.raises(ConfigError, match="classes_per_batch=20 but the training set has only 12"):
        train(tiny_config(None, ["data.classes_per_batch=20"]), progress=False, datasets=blob_datasets())
    with pytest.raises(ConfigError, match="zero_shot.*prototypes"):
        train(tiny_config(None, ["loss.zero_shot.enabled=true"]), progress=False, datasets=blob_datasets())


def test_zero_shot_regulariser_is_mixed_and_trained(tmp_path):
    cfg = tiny_config(tmp_path, ["model.pooling=gsp", "model.pooling_kwargs={num_prototypes: 4, mu: 0.5, eps: 5.0}",
                                 "loss.zero_shot.enabled=true", "loss.zero_shot.weight=0.3", "train.max_steps=3"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    rows = [r for r in res.history if "loss" in r]
    assert len(rows) == 3
    for r in rows:  # total = (1 - lambda) L_DML + lambda L_ZS
        assert r["loss"] == pytest.approx(0.7 * r["loss_dml"] + 0.3 * r["loss_zs"], rel=1e-5)
    zs = res.extras["zero_shot"]
    assert zs is not None and all(p.grad is not None for p in zs.parameters())
    ckpt = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    n_params = len(list(res.model.parameters())) + len(list(zs.parameters())) + len(list(res.extras["loss"].parameters()))
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == n_params
    assert ckpt["zero_shot"].keys() == zs.state_dict().keys()
