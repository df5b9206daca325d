"""``gspdml bench train``: training-step throughput with GAP vs GSP (vs GSP + L_ZS), eager and
compiled, side by side in one run.

For each backbone (default BN-Inception and ResNet-50, random init, frozen BN as in MLRC) one
model per pooling is built (``gap``, ``gsp``, ``gsp+zs`` = GSP with the zero-shot loss L_ZS on its
marginals); with ``compile`` each also gets a ``torch.compile``-d copy (same initial weights, its
own optimiser). Every timed round runs one full training step (forward, MS loss (+ L_ZS),
backward, Adam update) of each setup on the same fixed batch (default 32 images of 227 px,
8 classes x 4), alternating the order round by round so that machine load affects all alike. The
median step time gives images/s; the ratio to the first pooling (in the same mode) is the number
to compare with the target (GSP <= 1.05x GAP); ``speedup_vs_eager`` compares a compiled setup with
its eager twin. The first (warm-up) step of each setup is reported separately (``first_step_s``:
for a compiled setup it includes the compilation).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

from gspdml.bench.gsp import sync

__all__ = ["bench_train", "report", "POOLING_SETUPS", "GSP_KWARGS"]

GSP_KWARGS = {"num_prototypes": 64, "mu": 0.3, "eps": 5.0, "solver": "exact"}
#: benchmark pooling name -> (model pooling, with L_ZS)
POOLING_SETUPS = {"gap": ("gap", False), "gsp": ("gsp", False), "gsp+zs": ("gsp", True)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def bench_train(backbones=("bninception", "resnet50"), poolings=("gap", "gsp"), image_size: int = 227,
                batch_size: int = 32, steps: int = 5, warmup: int = 2, device: str = "auto",
                precision: str = "auto", loss: str = "MS", zero_shot: bool = False, seed: int = 0,
                progress: bool = True, *, compile: bool = False, compile_backend: str = "inductor",
                compile_mode: str | None = None) -> list[dict]:
    """Time training steps; one result row per (backbone, pooling, mode).

    Args:
        backbones: backbone names (the batch has the backbone's ``in_channels``, default 3).
        poolings: names of :data:`POOLING_SETUPS` (``gap``, ``gsp``, ``gsp+zs``); the first is the reference.
        precision: ``auto`` (float16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``
            (CUDA only, with a gradient scaler); see :func:`gspdml.config.resolve_precision`.
        zero_shot: also add L_ZS to the plain ``gsp`` setup (the older spelling of ``gsp+zs``).
        compile: time a ``torch.compile``-d copy of every model next to the eager one
            (``compile_backend``, ``compile_mode`` are passed to ``torch.compile``).

    Rows: ``backbone, pooling, mode (eager|compiled), image_size, batch_size, device, precision,
    amp, step_ms, images_per_s, ratio_to_<first pooling>, steps, threads, first_step_s`` and, for
    compiled rows, ``speedup_vs_eager``. A setup whose step raises (e.g. a model that does not
    compile) gets a row with ``error`` instead of the timings; the others are still timed.
    """
    from tqdm.auto import tqdm

    from gspdml.config import resolve_precision
    from gspdml.engine.distributed import resolve_device
    from gspdml.engine.state import TrainModule
    from gspdml.errors import InputError, unknown_choice
    from gspdml.losses import ZeroShotLoss, build_loss
    from gspdml.models import build_model

    if batch_size % 4 or batch_size < 8:
        raise InputError(f"batch_size must be a multiple of 4 and >= 8 (classes x 4 samples), got {batch_size}")
    if steps < 1 or warmup < 0:
        raise InputError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if compile and warmup < 1:
        raise InputError("compile needs warmup >= 1 (the first compiled step compiles the model)")
    poolings = tuple(str(p).lower() for p in poolings)
    for p in poolings:
        if p not in POOLING_SETUPS:
            raise InputError(str(unknown_choice("benchmark pooling", p, POOLING_SETUPS)))
    if len(set(poolings)) != len(poolings):
        raise InputError(f"poolings must be distinct, got {list(poolings)}")
    dev = resolve_device(str(device))
    dtype = resolve_precision(precision, dev.type)
    precision_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    use_scaler = dtype is torch.float16 and dev.type == "cuda"
    modes = ("eager", "compiled") if compile else ("eager",)
    num_classes = batch_size // 4
    y = torch.arange(num_classes, device=dev).repeat_interleave(4)
    rows = []
    for backbone in backbones:
        torch.manual_seed(seed)
        setups, errors = {}, {}
        for pooling in poolings:
            kind, with_zs = POOLING_SETUPS[pooling]
            with_zs = with_zs or (zero_shot and pooling == "gsp")
            model = build_model(backbone=backbone, pooling=kind, local_dim=128, freeze_bn=True,
                                pooling_kwargs=dict(GSP_KWARGS) if kind == "gsp" else None)
            for mode in modes:
                net = copy.deepcopy(model) if mode == "compiled" else model
                if mode == "compiled":
                    net = torch.compile(net, backend=compile_backend, mode=compile_mode)
                zs = ZeroShotLoss(num_classes, 128) if with_zs else None
                module = TrainModule(net, build_loss(loss, num_classes=num_classes, embedding_dim=128), zs, 0.1)
                module.to(dev).train()
                opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-5)
                scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
                setups[(pooling, mode)] = (module, opt, scaler)
        channels = int(getattr(model.backbone, "in_channels", 3))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, channels, image_size, image_size, generator=g).to(dev)

        def step(key) -> float:
            module, opt, scaler = setups[key]
            sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                total, _ = module(x, None, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            sync(dev)
            return time.perf_counter() - t0

        keys = list(setups)
        times = {k: [] for k in keys}
        first = {}
        bar = tqdm(total=(warmup + steps) * len(keys), desc=f"bench {backbone}", disable=not progress, leave=False)
        for i in range(warmup + steps):
            for key in (keys if i % 2 == 0 else keys[::-1]):
                if key in errors:
                    bar.update(1)
                    continue
                try:
                    dt = step(key)
                except Exception as exc:  # e.g. a model that torch.compile cannot compile
                    errors[key] = _first_line(exc)
                    bar.update(1)
                    continue
                if i == 0:
                    first[key] = dt
                if i >= warmup:
                    times[key].append(dt)
                bar.update(1)
        bar.close()
        medians = {k: statistics.median(v) for k, v in times.items() if k not in errors and v}
        for pooling in poolings:
            for mode in modes:
                key = (pooling, mode)
                row = {"backbone": backbone, "pooling": pooling, "mode": mode, "image_size": image_size,
                       "batch_size": batch_size, "device": str(dev), "precision": precision_name,
                       "amp": dtype is not None, "steps": steps, "threads": torch.get_num_threads()}
                if key in errors:
                    rows.append({**row, "error": errors[key]})
                    continue
                med = medians[key]
                base = medians.get((poolings[0], mode))
                row.update(step_ms=1000 * med, images_per_s=batch_size / med,
                           first_step_s=first.get(key))
                row["ratio_to_" + poolings[0]] = med / base if base else None
                if mode == "compiled":
                    eager = medians.get((pooling, "eager"))
                    row["speedup_vs_eager"] = eager / med if eager else None
                rows.append(row)
        del setups
    return rows


def report(rows: list[dict], loss: str = "MS") -> str:
    """The printed summary of :func:`bench_train`'s rows (the first pooling is the reference)."""
    from gspdml.io import format_table

    first = rows[0]
    ref = next((k for r in rows for k in r if k.startswith("ratio_to_")), "ratio_to_" + first["pooling"])
    compiled = any(r.get("mode") == "compiled" for r in rows)
    precision = first.get("precision", "fp16" if first.get("amp") else "fp32")
    head = (f"training step, batch {first['batch_size']}, {first['image_size']} px, loss {loss}, device "
            f"{first['device']}{f' (AMP {precision})' if first['amp'] else ''}, {first['threads']} threads, "
            f"median of {first['steps']} steps")
    header = ["backbone", "pooling"] + (["mode"] if compiled else []) + ["step ms", "images/s", "vs " + ref[len("ratio_to_"):]]
    if compiled:
        header += ["vs eager", "first step s"]
    body = []
    for r in rows:
        cells = [r["backbone"], r["pooling"]] + ([r["mode"]] if compiled else [])
        if "error" in r:
            cells += ["failed", "-", "-"] + (["-", "-"] if compiled else [])
        else:
            ratio = r.get(ref)
            cells += [f"{r['step_ms']:.1f}", f"{r['images_per_s']:.1f}", "-" if ratio is None else f"{ratio:.3f}x"]
            if compiled:
                speed = r.get("speedup_vs_eager")
                cells += ["-" if speed is None else f"{speed:.2f}x", f"{r['first_step_s']:.1f}"]
        body.append(cells)
    lines = [head, format_table(header, body, markdown=False)]
    lines += [f"{r['backbone']} {r['pooling']} {r['mode']} failed: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)
