"""Global-batch losses under DDP: a 2-rank gloo run (2 forked CPU processes) equals a 1-process run
on the concatenated global batch -- step losses, updated weights and loss state (XBM memory,
proxies, L_ZS table) -- for a pair loss with a miner, XBM, a proxy loss, NIR and L_ZS; and a
resumed DDP run equals an uninterrupted one.

All scenarios run in one pair of processes (one process group) to keep the file fast.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from engine_fixtures import Blobs, free_port, single_thread, tiny_config  # noqa: F401

WORLD = 2
BASE = ["optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=0.05", "model.freeze_bn=true",
        "train.max_steps=3", "train.checkpoint_every_steps=0", "eval.test_at_end=false", "train.precision=fp32",
        "model.projection=before"]  # the head these tolerances were set with (GAP scenarios)
GSP = ["model.pooling=gsp", "model.pooling_kwargs={num_prototypes: 4, mu: 0.5, eps: 5.0, init: random}"]
SCENARIOS = {
    "ms": ["loss.name=MS"],
    "xbm": ["loss.name=XBM", "loss.kwargs={warmup_iters: 1, memory_size: 30}"],
    "panchor": ["loss.name=PAnchor", "loss.kwargs={proxy_lr_mult: 1.0}"],
    "nir": ["loss.name=PAnchor+NIR", "loss.kwargs={proxy_weight: 0.5, num_blocks: 1, hidden: 8, proxy_lr_mult: 10.0, flow_lr_mult: 1.0}"],
    "zs": ["loss.name=C1", *GSP, "loss.zero_shot.enabled=true", "loss.zero_shot.weight=0.3",
           "loss.zero_shot.scale=2.0"],
    # k-center warm-up: the GAP memory is filled with the gathered global batch (fills during step 2)
    "kcenter": ["loss.name=C1", "model.pooling=gsp",
                "model.pooling_kwargs={num_prototypes: 4, mu: 0.5, eps: 5.0, init: kcenter, memory_size: 16}"],
}
RESUME = ["loss.name=XBM", "loss.kwargs={warmup_iters: 1, memory_size: 30}", "train.max_steps=4"]


def _run(cfg, datasets, **kw) -> dict:
    """Train and return step losses, weights and the loss / L_ZS state."""
    from gspdml.engine.trainer import train

    losses = []
    res = train(cfg, progress=False, datasets=datasets, callback=lambda row: losses.append(row["loss"]), **kw)
    zs = res.extras["zero_shot"]
    return {"losses": losses, "model": res.model.state_dict(), "loss": res.extras["loss"].state_dict(),
            "zero_shot": None if zs is None else zs.state_dict(), "run_dir": res.run_dir}


def _worker(rank: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    # one process group for all scenarios: train() then neither starts nor destroys one
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from engine_fixtures import Blobs as B, tiny_config as tc

    results = {}
    for name, extra in SCENARIOS.items():
        results[name] = _run(tc(None, BASE + extra), {"train": B(12, 6)})
    # resume: 4 uninterrupted steps vs 2 steps (stopped by the callback, last.pt) + resume to 4
    aug = {"train": B(12, 6, augment=True)}
    results["uninterrupted"] = _run(tc(Path(out) / "a", BASE + RESUME), aug)
    from gspdml.engine.trainer import train

    first = train(tc(Path(out) / "b", BASE + RESUME), progress=False, datasets=aug,
                  callback=lambda row: row["step"] >= 2)
    run_dir = dist_broadcast(first.run_dir)
    results["resumed"] = _run(tc(Path(out) / "b", BASE + RESUME), aug, resume=run_dir)
    results["first_steps"] = first.steps
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def dist_broadcast(obj):
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    import torch._dynamo  # noqa: F401  (imported once here; the forked children inherit it)
    import gspdml.engine.trainer, gspdml.losses.builtin, gspdml.models.embedding  # noqa: F401, E401
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(name: str) -> dict:
    """The same config in one process: every step trains on the whole P x K global batch."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(tiny_config(None, BASE + SCENARIOS[name]), {"train": Blobs(12, 6)})
    finally:
        torch.set_num_threads(before)


def _same_tensors(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_one_process_on_the_global_batch(ranks, name):
    r0, r1 = ranks[0][name], ranks[1][name]
    # every rank computes the loss of the same global batch, and the replicas stay identical
    assert r0["losses"] == r1["losses"]
    _same_tensors(r0["model"], r1["model"], atol=0)
    _same_tensors(r0["loss"], r1["loss"], atol=0)  # proxies, NIR flow, XBM memory: identical on all ranks
    if r0["zero_shot"] is not None:
        _same_tensors(r0["zero_shot"], r1["zero_shot"], atol=0)
    ref = _reference(name)
    assert len(ref["losses"]) == len(r0["losses"]) == 3
    # float32 losses (~15 for PAnchor): 1e-6 relative is one or two ulps
    assert r0["losses"] == pytest.approx(ref["losses"], abs=1e-6, rel=1e-6)
    _same_tensors(r0["model"], ref["model"], atol=1e-6)
    _same_tensors(r0["loss"], ref["loss"], atol=1e-6)
    if name == "zs":
        assert r0["zero_shot"] is not None
        _same_tensors(r0["zero_shot"], ref["zero_shot"], atol=1e-6)


def test_xbm_memory_holds_the_global_batches(ranks):
    from gspdml.losses.wrappers import XBMLoss

    ref = _reference("xbm")
    for r in ranks:
        state = r["xbm"]["loss"]
        # warmup 1: steps 2 and 3 enqueue their 12-sample global batches
        assert int(state["iteration"]) == 3 and int(state["queue_idx"]) == 24 and not bool(state["memory_filled"])
    loss = XBMLoss(8, 30, 1, 0.0, 0.5, 1.0)
    loss.load_state_dict(ranks[1]["xbm"]["loss"])
    emb, labels = loss.memory_contents()
    loss.load_state_dict(ref["loss"])
    ref_emb, ref_labels = loss.memory_contents()
    assert emb.shape == (24, 8)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(emb, ref_emb, rtol=0, atol=1e-6)


def test_resume_under_ddp_equals_an_uninterrupted_ddp_run(ranks):
    for r in ranks:
        assert r["first_steps"] == 2
        a, b = r["uninterrupted"], r["resumed"]
        assert b["losses"] == pytest.approx(a["losses"][2:], abs=1e-6, rel=0)
        _same_tensors(a["model"], b["model"], atol=1e-6)
        _same_tensors(a["loss"], b["loss"], atol=1e-6)
    assert ranks[0]["resumed"]["run_dir"] is not None and ranks[1]["resumed"]["run_dir"] is None
