"""The MLRC 4-fold protocol on tiny data, checked against an independent recomputation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine_fixtures import Blobs, single_thread, tiny_config  # noqa: F401
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
