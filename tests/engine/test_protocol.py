"""The MLRC 4-fold protocol on tiny data, checked against an independent recomputation."""
from __future__ import annotations

import itertools
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
    all_embs = []
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
        all_embs.append(embs)
    for dim, rows in (("128D", res.dim128), ("512D", res.dim512)):
        vals = [row["map_at_r"] for row in rows]
        assert res.repeat_summary[dim]["map_at_r"]["mean"] == pytest.approx(np.mean(vals))
        assert res.repeat_summary[dim]["map_at_r"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert "| 512D |" in (out / "protocol.md").read_text()

    # the headline: all 2^4 = 16 collections of one model per fold, recomputed by brute force
    choices, rows128, rows512 = [], [], []
    for choice in itertools.product(range(2), repeat=4):
        choices.append(list(choice))
        rows128.append({m: np.mean([res.per_fold[choice[k]][k][m] for k in range(4)]) for m in res.per_fold[0][0]})
        cat = concat_embeddings([all_embs[choice[k]][k] for k in range(4)])
        rows512.append(compute_retrieval_metrics(cat, labels))
    assert res.collections["choices"] == choices
    for got, expected in ((res.collections["128D"], rows128), (res.collections["512D"], rows512)):
        assert len(got) == 16 and all(a == pytest.approx(b) for a, b in zip(got, expected))
    for dim, rows in (("128D", rows128), ("512D", rows512)):
        for m in rows[0]:
            vals = [row[m] for row in rows]
            assert res.summary[dim][m]["mean"] == pytest.approx(np.mean(vals))
            assert res.summary[dim][m]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert saved["collections"]["choices"] == choices and saved["summary"] == res.summary
    assert saved["collections"]["512D"] == res.collections["512D"]
    assert saved["per_repeat"]["128D"] == res.dim128
    assert saved["per_repeat"]["512D"] == res.dim512
    assert saved["per_repeat"]["summary"] == res.repeat_summary
    md = (out / "protocol.md").read_text()
    assert "over the 16 collection(s) of one model per fold" in md and "Per repeat" in md


def test_protocol_summary_plot_reads_protocol_json(tmp_path):
    from gspdml.errors import InputError
    from gspdml.viz.protocol import plot_protocol_summary, protocol_bars

    summary = {dim: {m: {"mean": 0.1 * (i + 1) + (0.2 if dim == "512D" else 0.0), "std": 0.01 * (i + 1)}
                     for i, m in enumerate(("precision_at_1", "r_precision", "map_at_r"))} for dim in ("128D", "512D")}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "protocol.json").write_text(json.dumps({"summary": summary}))
    other = {"summary": {dim: {m: {"mean": 0.5, "std": 0.0} for m in summary[dim]} for dim in summary}}
    bars = protocol_bars({"gsp": tmp_path / "a", "gap": other})
    assert bars["mean"].shape == (3, 2, 2) and bars["names"] == ["gsp", "gap"]
    assert bars["mean"][2, 1, 0] == pytest.approx(100 * (0.3 + 0.2))  # MAP@R, 512D, first result
    assert bars["std"][0, 0, 0] == pytest.approx(1.0) and bars["mean"][1, 0, 1] == pytest.approx(50.0)
    png = plot_protocol_summary({"gsp": tmp_path / "a" / "protocol.json", "gap": other}, tmp_path / "fig6.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="no protocol.json"):
        protocol_bars({"x": tmp_path / "missing"})
    with pytest.raises(InputError, match="no 128D .precision_at_1."):
        protocol_bars({"x": {"summary": {"128D": {}, "512D": {}}}})
