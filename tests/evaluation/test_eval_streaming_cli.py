"""``gspdml eval --memmap DIR --chunk-size N`` on a query/gallery split equals the in-memory run."""
from __future__ import annotations

import json

import pytest
import torch

from fixtures_data import make_csv
from gspdml.cli import main


def _checkpoint(run):
    from gspdml.config import TrainConfig, to_dict
    from gspdml.engine.checkpoint import save_checkpoint
    from gspdml.models import build_model

    cfg = TrainConfig()
    cfg.data.dataset, cfg.data.root, cfg.data.transform, cfg.data.normalization = "csv", "", "small", "none"
    cfg.data.image_size = 12
    cfg.model.backbone, cfg.model.backbone_kwargs = "smallcnn", {"widths": [4, 4, 8], "in_channels": 3}
    cfg.model.local_dim = 16
    cfg.model.pooling, cfg.model.pooling_kwargs = "gsp", {"num_prototypes": 3}
    cfg.model.freeze_bn = False
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_checkpoint({"config": to_dict(cfg), "model": model.state_dict(), "num_classes": 2, "step": 0, "epoch": 0,
                     "metrics": {}}, run / "checkpoints" / "best.pt")
    return run


def test_eval_memmap_chunked_equals_in_memory_on_query_gallery(tmp_path):
    info = make_csv(tmp_path / "data")
    run = _checkpoint(tmp_path / "run")
    base = ["eval", "--checkpoint", str(run), "--dataset", "csv", "--root", info["csv"], "--split", "query",
            "--gallery-split", "gallery", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    assert main(base + ["--json", str(tmp_path / "mem.json")]) == 0
    mm_dir = tmp_path / "mm"
    assert main(base + ["--memmap", str(mm_dir), "--chunk-size", "1", "--knn", "faiss",
                        "--json", str(tmp_path / "mm.json")]) == 0
    mem = json.loads((tmp_path / "mem.json").read_text())
    got = json.loads((tmp_path / "mm.json").read_text())
    assert got["gallery_split"] == "gallery" and mem["metrics"]
    assert got["metrics"] == pytest.approx(mem["metrics"], abs=1e-6)
    assert list(mm_dir.iterdir()) == []  # temporary embeddings removed
    assert main(base + ["--chunk-size", "0"]) == 2
