"""DDP on CPU: 2 processes with gloo (as torchrun would start them) vs a single-process reference."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from engine_fixtures import Blobs, free_port, single_thread, tiny_config  # noqa: F401

DDP_OVERRIDES = ["optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=0.05",
                 "model.freeze_bn=true", "train.max_steps=2", "train.checkpoint_every_steps=0"]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from engine_fixtures import Blobs as B, tiny_config as tc
    from gspdml.engine.trainer import train

    cfg = tc(Path(out) / "runs", DDP_OVERRIDES)
    res = train(cfg, progress=False, datasets={"train": B(12, 6), "test": B(6, 5, seed=1, first_class=100)})
    torch.save({"model": res.model.state_dict(), "final": res.final_metrics,
                "run_dir": str(res.run_dir) if res.run_dir else None}, Path(out) / f"rank{rank}.pt")


def test_ddp_two_cpu_processes_match_one_process_on_the_global_batch(tmp_path):
    world = 2
    # import what DDP and the engine import lazily once here, so the forked children need not
    import torch._dynamo  # noqa: F401
    import gspdml.data.samplers, gspdml.engine.trainer, gspdml.evaluation.metrics  # noqa: F401, E401
    import gspdml.losses.builtin, gspdml.models.embedding  # noqa: F401, E401
    # fork: the children inherit the imported modules (spawn would re-import torch in each)
    mp.start_processes(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True,
                       start_method="fork")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for k in r0["model"]:  # DDP keeps the replicas identical
        torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0)
    assert r0["run_dir"] is not None and r1["run_dir"] is None  # only rank 0 writes the run folder
    assert r0["final"] == pytest.approx(r1["final"])

    # single-process reference: step s trains on global batch s of the plan (4 classes x 3
    # samples); rank r held classes [2r, 2r + 2) of it and the losses saw the gathered batch
    from gspdml.data import ClassBalancedBatchSampler, relabeled
    from gspdml.engine.checkpoint import seed_everything
    from gspdml.engine.evaluate import embed_dataset
    from gspdml.engine.state import TrainModule
    from gspdml.evaluation.metrics import compute_retrieval_metrics
    from gspdml.losses import build_loss
    from gspdml.models import build_model

    cfg = tiny_config(None, DDP_OVERRIDES)
    seed_everything(cfg.train.seed)  # rank 0's seed: the model DDP broadcasts
    ds = relabeled(Blobs(12, 6))
    module = TrainModule(build_model(cfg.model), build_loss("C1", num_classes=12, embedding_dim=8), None, 0.0)
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    plan = ClassBalancedBatchSampler(ds.labels, 4, 3, seed=cfg.train.seed)
    batches = list(plan)
    for s in range(2):
        b = batches[s]
        x = torch.stack([ds[i][0] for i in b])
        y = torch.tensor([ds[i][1] for i in b])
        loss = module(x, None, y)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=0, atol=1e-6, msg=k)
    # evaluation gathered over ranks (strided shards) = evaluation in one process
    emb, labels = embed_dataset(module.model, Blobs(6, 5, seed=1, first_class=100), progress=False)
    assert r0["final"] == pytest.approx(compute_retrieval_metrics(emb, labels), abs=1e-6)


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("spec, count, expected", [
    ("cpu", 0, "cpu"), ("CPU", 2, "cpu"), ("auto", 0, "cpu"), ("auto", 2, "cuda:0"),
    ("cuda", 1, "cuda:0"), ("cuda:1", 2, "cuda:1"), ("cuda:0", 1, "cuda:0"),
])
def test_resolve_device_gives_the_device_asked_for(monkeypatch, spec, count, expected):
    from gspdml.engine.distributed import resolve_device

    _fake_cuda(monkeypatch, count)
    assert resolve_device(spec) == torch.device(expected)


def test_resolve_device_uses_the_local_rank_for_cuda(monkeypatch):
    from gspdml.engine.distributed import resolve_device

    _fake_cuda(monkeypatch, 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index wins


@pytest.mark.parametrize("spec, count, local_rank, match", [
    ("cuda", 0, 0, r"device 'cuda' was asked for but no CUDA device is available"),
    ("cuda:0", 0, 0, r"'cuda:0' was asked for but no CUDA device is available"),
    ("cuda:1", 1, 0, r"device 'cuda:1' is not available: this machine has 1 CUDA device\(s\) \(cuda:0\)"),
    ("cuda:3", 2, 0, r"'cuda:3' is not available: this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"),
    ("cuda", 2, 2, r"'cuda' \(cuda:2, this process's LOCAL_RANK\) is not available"),
    ("tpu", 2, 0, r"unknown device 'tpu'; valid choices are: auto, cpu, cuda, cuda:N"),
    ("cpu:1", 2, 0, r"unknown device 'cpu:1'"),
    ("cuda:x", 2, 0, r"unknown device 'cuda:x'"),
])
def test_resolve_device_never_falls_back_silently(monkeypatch, spec, count, local_rank, match):
    from gspdml.engine.distributed import resolve_device
    from gspdml.errors import ConfigError

    _fake_cuda(monkeypatch, count)
    with pytest.raises(ConfigError, match=match):
        resolve_device(spec, local_rank=local_rank)
