"""Launching: ``gspdml protocol`` under DDP (2 gloo processes, folds one after the other, every rank
in each) and multi-node ``torchrun`` (two one-process "nodes" on localhost, c10d rendezvous)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from engine_fixtures import Blobs, free_port, single_thread, tiny_config  # noqa: F401

PROTOCOL = ["name=proto", "train.max_steps=2", "train.eval_every_steps=1", "optim.name=sgd", "optim.momentum=0.0",
            "optim.lr=0.05", "model.freeze_bn=true"]


def _protocol_worker(rank: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from engine_fixtures import Blobs as B, tiny_config as tc
    from gspdml.engine.protocol import run_protocol

    res = run_protocol(tc(Path(out), PROTOCOL), repeats=1, progress=False, folds=[0, 1],
                       datasets={"train": B(12, 6), "test": B(6, 4, seed=1, first_class=100)})
    torch.save({"per_fold": res.per_fold, "dim512": res.dim512, "out_dir": res.out_dir}, Path(out) / f"rank{rank}.pt")


def test_protocol_under_ddp_runs_every_fold_on_every_rank(tmp_path):
    import torch._dynamo  # noqa: F401  (imported once; the forked children inherit it)
    import gspdml.engine.protocol, gspdml.losses.builtin, gspdml.models.embedding  # noqa: F401, E401
    mp.start_processes(_protocol_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["per_fold"] == r1["per_fold"] and r0["dim512"] == r1["dim512"]
    out = tmp_path / "proto"
    assert r0["out_dir"] == r1["out_dir"] == out  # the folder rank 0 made, on every rank
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "protocol.json", "protocol.md", "repeat0_fold0",
                                                   "repeat0_fold1"]
    saved = json.loads((out / "protocol.json").read_text())
    assert saved["folds"] == [0, 1] and saved["per_fold"] == r0["per_fold"]
    # independent recomputation: each fold's saved best weights embed the test set in one process
    from gspdml.engine.checkpoint import load_model_from_checkpoint
    from gspdml.engine.evaluate import embed_dataset
    from gspdml.evaluation.metrics import compute_retrieval_metrics

    test = Blobs(6, 4, seed=1, first_class=100)
    for k in range(2):
        model, fold_cfg, _ = load_model_from_checkpoint(out / f"repeat0_fold{k}")
        assert fold_cfg.data.fold == k
        emb, labels = embed_dataset(model, test, progress=False)
        assert r0["per_fold"][0][k] == pytest.approx(compute_retrieval_metrics(emb, labels), abs=1e-6)


TOKENS = ["name=mn", "data.dataset=tokens", "data.transform=none", "data.options={samples_per_class: 4, seed: 0}", "data.num_workers=0",
          "data.classes_per_batch=4", "data.samples_per_class=2", "model.backbone=token_embedding",
          "model.backbone_kwargs={num_tokens: 68, dim: 16}", "model.pooling=gap", "model.local_dim=8",
          "loss.name=MS", "optim.name=sgd", "optim.lr=0.05", "train.max_steps=3", "train.device=cpu", "train.plot=false",
          "eval.test_at_end=false", "train.eval_every_steps=0"]


def _torchrun(node: int, port: int, config: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
           "--rdzv-id", "gspdml-test", "-m", "gspdml.cli", "train", "-c", str(config), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_multi_node_torchrun_on_localhost(tmp_path):
    from gspdml.config import load_config, save_config

    out = tmp_path / "runs"
    config = tmp_path / "mn.yaml"
    save_config(load_config(None, [*TOKENS, f"output_dir={out}"]), config)
    port = free_port()
    nodes = [_torchrun(i, port, config) for i in range(2)]
    outputs = []
    for p in nodes:
        try:
            outputs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in nodes:
                q.kill()
            raise
    for p, text in zip(nodes, outputs):
        assert p.returncode == 0, text[-3000:]
    runs = list(out.iterdir())
    assert [r.name for r in runs] == ["mn"]  # one run folder, written by global rank 0
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["steps"] == 3
    from gspdml.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(runs[0] / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # one RNG state per rank: two processes trained
    assert ckpt["sampler"]["world_size"] == 2
