"""Frozen batch-norm statistics (``gspdml.models.batchnorm``)."""
from __future__ import annotations

import pickle

import torch
from torch import nn

from gspdml.models.batchnorm import freeze_batchnorm, frozen_batchnorm_layers, is_frozen_batchnorm, unfreeze_batchnorm


class _Tiny(nn.Module):
    out_channels = 4
    input_kind = "image"

    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_frozen_batchnorm_keeps_statistics_and_trains_affine():
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    freeze_batchnorm(model)
    model.train()
    assert model.training and not model.bn.training and is_frozen_batchnorm(model.bn)
    assert frozen_batchnorm_layers(model) == ["bn"]
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    x = torch.randn(4, 3, 8, 8) * 3 + 1
    out = model(x)
    out.square().mean().backward()
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert model.bn.weight.grad is not None and model.bn.weight.grad.abs().sum() > 0
    assert model.bn.bias.grad.abs().sum() > 0
    # normalisation uses the running statistics (eval behaviour), by hand:
    conv = model.conv(x)
    ref = torch.relu((conv - 0.3) / torch.sqrt(torch.tensor(2.0) + model.bn.eps) * model.bn.weight[None, :, None, None]
                     + model.bn.bias[None, :, None, None])
    assert torch.allclose(out, ref, atol=1e-6)
    # state dict keys unchanged, pickling works, and unfreezing restores train-mode BN
    assert set(model.state_dict()) == set(_Tiny().state_dict())
    clone = pickle.loads(pickle.dumps(model))
    clone.train()
    assert not clone.bn.training
    unfreeze_batchnorm(model)
    model.train()
    assert model.bn.training and type(model.bn) is nn.BatchNorm2d

