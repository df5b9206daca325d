"""``prototype_cost`` against brute-force pairwise distances (values and gradients)."""
from __future__ import annotations

import pytest
import torch

from gspdml.pooling.transport import prototype_cost


def brute_cost(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    fb = f / f.norm(dim=-1, keepdim=True).clamp_min(1.0)
    wb = w / w.norm(dim=-1, keepdim=True).clamp_min(1.0)
    return (wb[None, :, None, :] - fb[:, None, :, :]).pow(2).sum(-1).sqrt()


def test_prototype_cost_matches_brute_force_values_and_gradients():
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(3, 8, 5, generator=gen, dtype=torch.float64)
    f[0, :3] *= 0.2  # some features shorter than 1 (kept as they are)
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    w[1] *= 0.3
    c = prototype_cost(f, w)
    assert c.shape == (3, 4, 8)
    ref = brute_cost(f, w)
    assert torch.allclose(c, ref, atol=1e-13)
    up = torch.randn(3, 4, 8, generator=gen, dtype=torch.float64)
    fr, wr = f.clone().requires_grad_(), w.clone().requires_grad_()
    g1 = torch.autograd.grad((prototype_cost(fr, wr) * up).sum(), (fr, wr))
    fr2, wr2 = f.clone().requires_grad_(), w.clone().requires_grad_()
    g2 = torch.autograd.grad((brute_cost(fr2, wr2) * up).sum(), (fr2, wr2))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-11)


def test_prototype_cost_gradient_is_finite_at_zero_distance():
    w = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[[0.6, 0.8], [0.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    c = prototype_cost(f, w)
    assert c[0, 0, 0].item() == pytest.approx(0.0, abs=1e-7)
    gf, gw = torch.autograd.grad(c.sum(), (f, w))
    assert torch.isfinite(gf).all() and torch.isfinite(gw).all()
