"""``gspdml bench train``: training-step throughput with GAP vs GSP, side by side in one run.

For each backbone (default BN-Inception and ResNet-50, random init, frozen BN as in MLRC) one
model per pooling is built; every timed round runs one full training step (forward, MS loss,
backward, Adam update) of each model on the same fixed batch (default 32 images of 227 px,
8 classes x 4), alternating the poolings so that machine load affects both alike. The median step
time gives images/s; the GSP/GAP ratio is the number to compare with the target (<= 1.05).
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ["bench_train", "report"]

GSP_KWARGS = {"num_prototypes": 64, "mu": 0.3, "eps": 5.0, "solver": "exact"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(backbones=("bninception", "resnet50"), poolings=("gap", "gsp"), image_size: int = 227,
                batch_size: int = 32, steps: int = 5, warmup: int = 2, device: str = "auto",
                amp: bool | None = None, loss: str = "MS", zero_shot: bool = False, seed: int = 0,
                progress: bool = True) -> list[dict]:
    """Time training steps; one result row per (backbone, pooling)."""
    from tqdm.auto import tqdm

    from gspdml.engine.distributed import resolve_device
    from gspdml.engine.state import TrainModule
    from gspdml.errors import InputError
    from gspdml.losses import ZeroShotLoss, build_loss
    from gspdml.models import build_model

    if batch_size % 4 or batch_size < 8:
        raise InputError(f"batch_size must be a multiple of 4 and >= 8 (classes x 4 samples), got {batch_size}")
    dev = resolve_device(str(device))
    use_amp = (dev.type == "cuda") if amp is None else (amp and dev.type == "cuda")
    torch.manual_seed(seed)
    num_classes = batch_size // 4
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    y = torch.arange(num_classes, device=dev).repeat_interleave(4)
    rows = []
    for backbone in backbones:
        setups = {}
        for pooling in poolings:
            model = build_model(backbone=backbone, pooling=pooling, local_dim=128, freeze_bn=True,
                                pooling_kwargs=dict(GSP_KWARGS) if pooling == "gsp" else None)
            zs = ZeroShotLoss(num_classes, 128) if zero_shot and pooling == "gsp" else None
            module = TrainModule(model, build_loss(loss, num_classes=num_classes, embedding_dim=128), zs, 0.1).to(dev)
            module.train()
            opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-5)
            scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
            setups[pooling] = (module, opt, scaler)

        def step(pooling: str) -> float:
            module, opt, scaler = setups[pooling]
            _sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                total, _ = module(x, None, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            _sync(dev)
            return time.perf_counter() - t0

        times = {p: [] for p in poolings}
        bar = tqdm(total=(warmup + steps) * len(poolings), desc=f"bench {backbone}", disable=not progress, leave=False)
        for i in range(warmup + steps):
            order = poolings if i % 2 == 0 else tuple(reversed(poolings))
            for p in order:
                dt = step(p)
                if i >= warmup:
                    times[p].append(dt)
                bar.update(1)
        bar.close()
        base = statistics.median(times[poolings[0]])
        for p in poolings:
            med = statistics.median(times[p])
            rows.append({"backbone": backbone, "pooling": p, "image_size": image_size, "batch_size": batch_size,
                         "device": str(dev), "amp": use_amp, "step_ms": 1000 * med, "images_per_s": batch_size / med,
                         "ratio_to_" + poolings[0]: med / base, "steps": steps, "threads": torch.get_num_threads()})
        del setups
    return rows


def report(rows: list[dict], loss: str = "MS") -> str:
    """The printed summary of :func:`bench_train`'s rows (the first pooling is the reference)."""
    from gspdml.io import format_table

    first = rows[0]
    ref = next(k for k in first if k.startswith("ratio_to_"))
    head = (f"training step, batch {first['batch_size']}, {first['image_size']} px, loss {loss}, device "
            f"{first['device']}{' (AMP)' if first['amp'] else ''}, {first['threads']} threads, median of "
            f"{first['steps']} steps")
    table = format_table(
        ["backbone", "pooling", "step ms", "images/s", "vs " + ref[len("ratio_to_"):]],
        [[r["backbone"], r["pooling"], f"{r['step_ms']:.1f}", f"{r['images_per_s']:.1f}", f"{r[ref]:.3f}x"]
         for r in rows], markdown=False)
    return head + "\n" + table
