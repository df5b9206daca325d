"""The MLRC 4-fold protocol on tiny data, and the train/eval/protocol commands end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from engine_fixtures import Blobs, single_thread, tiny_config  # noqa: F401
from gspdml.cli import main
from gspdml.engine.checkpoint import load_model_from_checkpoint
from gspdml.engine.evaluate import embed_dataset
from gspdml.evaluation.metrics import compute_retrieval_metrics
from gspdml.engine.protocol import run_protocol
from gspdml.evaluation.mlrc import concat_embeddings


def test_four_fold_protocol_matches_an_independent_recomputation(tmp_path):
    cfg = tiny_config(tmp_path, ["name=proto", "train.max_steps=3", "train.eval_every_steps=1"])
    test = Blobs(6, 4, seed=1, first_class=100)
    res = run_protocol(cfg, repeats=2, progress=False, datasets={"train": Blobs(12, 6), "test": test})
    out = tmp_path / "proto"
    assert res.out_dir == out
    assert (out / "protocol.md").is_file() and (out / "config.yaml").is_file()
    saved = json.loads((out / "protocol.json").read_text())
    assert len(saved["per_fold"]) == 2 and all(len(r) == 4 for r in saved["per_fold"])
    for r in range(2):
        embs = []
        for k in range(4):
            run = out / f"repeat{r}_fold{k}"
            model, fold_cfg, _ = load_model_from_checkpoint(run)  # best validation weights
            assert fold_cfg.data.fold == k and fold_cfg.train.seed == r
            emb, labels = embed_dataset(model, test, progress=False)
            assert res.per_fold[r][k] == pytest.approx(compute_retrieval_metrics(emb, labels))
            embs.append(emb)
        avg = {m: np.mean([res.per_fold[r][k][m] for k in range(4)]) for m in res.per_fold[r][0]}
        assert res.dim128[r] == pytest.approx(avg)
        cat = concat_embeddings(embs)
        assert cat.shape[1] == 4 * cfg.model.local_dim
        assert res.dim512[r] == pytest.approx(compute_retrieval_metrics(cat, labels))
    for dim, rows in (("128D", res.dim128), ("512D", res.dim512)):
        vals = [row["map_at_r"] for row in rows]
        assert res.summary[dim]["map_at_r"]["mean"] == pytest.approx(np.mean(vals))
        assert res.summary[dim]["map_at_r"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert "| 512D |" in (out / "protocol.md").read_text()


def _digits_config(tmp_path):
    cfg = {
        "name": "digits_cli",
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "digits_collage", "transform": "none", "normalization": "none",
                 "classes_per_batch": 4, "samples_per_class": 2, "num_workers": 0,
                 "options": {"grid": 2, "upsample": 1, "samples_per_class": 8}},
        "model": {"backbone": "smallcnn", "backbone_kwargs": {"widths": [4, 4, 8]}, "local_dim": 8,
                  "pooling": "gap", "freeze_bn": False},
        "loss": {"name": "C1"},
        "optim": {"lr": 1.0e-3},
        "train": {"max_steps": 2, "device": "cpu", "plot": False, "log_every": 1},
    }
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_eval_protocol_commands(tmp_path, capsys):
    path = _digits_config(tmp_path)
    assert main(["train", "--config", str(path), "train.max_steps=3", "--no-progress"]) == 0
    run = tmp_path / "runs" / "digits_cli"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 3 and "run folder:" in capsys.readouterr().out

    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--split", "test", "--device", "cpu", "--no-progress",
                 "--json", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["metrics"] == pytest.approx(summary["final"])  # same model, same split
    assert "map_at_r" in capsys.readouterr().out

    # resume with the stored config: continue to 5 steps
    assert main(["train", "--resume", str(run), "train.max_steps=5", "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5

    assert main(["protocol", "--config", str(path), "--folds", "0", "1", "--out", str(tmp_path / "p"),
                 "--no-progress", "train.save_checkpoints=false"]) == 0
    assert "| 128D |" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "protocol.json").read_text())["folds"] == [0, 1]


def test_commands_report_user_errors(tmp_path, capsys):
    path = _digits_config(tmp_path)
    assert main(["train", "--config", str(path), "optim.learnrate=1"]) == 2
    assert "valid keys of 'optim'" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "data.dataset=imagenet"]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "cub" in err  # unknown dataset lists the choices
