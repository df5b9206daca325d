"""The one code path of every device (torch-only root, no host-side zero check), run on CPU."""
from __future__ import annotations

import numpy as np
import torch

from gspdml.pooling.transport import partial_transport, prototype_cost
from pooling.transport.references import as_t, make_costs, reference_iteration


def test_device_generic_code_path():
    """The code path CUDA takes (torch-only root, no host-side zero check), run on CPU; since
    there are no CPU fast paths any more, both gradients come from that one path."""
    c = make_costs("clustered", B=2, m=4, n=9, seed=6)
    rho_ref, plan_ref = reference_iteration(c, 0.3, 20.0)
    x_fast = as_t(c).requires_grad_()
    (g_fast,) = torch.autograd.grad(partial_transport(x_fast, 0.3, 20.0).weights.pow(2).sum(), x_fast)
    x = as_t(c).requires_grad_()
    res = partial_transport(x, 0.3, 20.0)
    assert np.abs(res.rho.detach().numpy() - rho_ref).max() <= 1e-10
    assert np.abs(res.plan.detach().numpy() - plan_ref).max() <= 1e-10
    (g,) = torch.autograd.grad(res.weights.pow(2).sum(), x)
    assert torch.allclose(g, g_fast, rtol=0, atol=1e-14)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    masked = partial_transport(as_t(c), 0.3, 20.0, mask=mask)
    one = partial_transport(as_t(c)[1:, :, :6], 0.3, 20.0)
    assert torch.allclose(masked.weights[1, :6], one.weights[0], rtol=0, atol=1e-14)
    w = torch.tensor([[0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[[0.6, 0.8], [0.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    gf, gw = torch.autograd.grad(prototype_cost(f, w).sum(), (f, w))
    assert torch.isfinite(gf).all() and torch.isfinite(gw).all()
