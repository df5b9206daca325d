"""Optimiser parameter groups (weight decay, loss lr multipliers) and learning-rate schedules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_fixtures import single_thread, tiny_config  # noqa: F401
from gspdml.engine.optim import build_optimizer, build_scheduler
from gspdml.engine.state import TrainModule
from gspdml.losses import build_loss
from gspdml.models import build_model


def test_optimizer_groups_no_decay_on_norm_and_bias():
    cfg = tiny_config(None, ["loss.name=PAnchor", "optim.weight_decay=0.5", "model.pooling=gsp",
                             "model.pooling_kwargs={num_prototypes: 4}"])
    model = build_model(cfg.model)
    assert any(name.endswith("prototypes") for name, _ in model.named_parameters())
    loss = build_loss("PAnchor", num_classes=5, embedding_dim=8)
    opt = build_optimizer(cfg, TrainModule(model, loss, None, 0.1))
    by_name = {g["name"]: g for g in opt.param_groups}
    decayed = {id(p) for p in by_name["decay"]["params"]}
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith("prototypes"):  # BN weights/biases, biases, GSP prototypes
            assert id(p) not in decayed, name
        else:
            assert id(p) in decayed, name
    assert by_name["no_decay"]["weight_decay"] == 0.0 and by_name["decay"]["weight_decay"] == 0.5
    assert by_name["proxies"]["lr"] == pytest.approx(cfg.optim.lr * loss.param_groups()[0]["lr_mult"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in loss.parameters())


def test_proxy_lr_mult_overrides_only_the_proxies():
    # the one proxy learning-rate setting is the loss's own keyword
    cfg = tiny_config(None, ["loss.name=PAnchor+NIR", "loss.kwargs={proxy_lr_mult: 7}", "optim.lr=0.01"])
    loss = build_loss(cfg.loss.name, num_classes=5, embedding_dim=8, **cfg.loss.kwargs)
    opt = build_optimizer(cfg, TrainModule(build_model(cfg.model), loss, None, 0.1))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["proxies"]["lr"] == pytest.approx(0.07)
    flow_mult = {g["name"]: g["lr_mult"] for g in loss.param_groups()}["nir_flow"]
    assert flow_mult != 7 and by_name["nir_flow"]["lr"] == pytest.approx(0.01 * flow_mult)


def _scheduled_lrs(overrides, total_steps: int, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimiser steps under ``build_scheduler``."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = build_scheduler(tiny_config(None, overrides + ["optim.lr=1.0"]), opt, total_steps=total_steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return lrs


def test_schedulers():
    lrs = _scheduled_lrs(["optim.scheduler=cosine", "optim.warmup_steps=2"], total_steps=12, steps=12)
    # warm-up 1/2, 2/2, then cosine from 1 down over the remaining 10 steps
    expected = [0.5, 1.0] + [0.5 * (1 + np.cos(np.pi * t / 10)) for t in range(10)]
    assert lrs == pytest.approx(expected)
    lrs = _scheduled_lrs(["optim.scheduler=step", "optim.step_size=3", "optim.gamma=0.1"], total_steps=10, steps=7)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
