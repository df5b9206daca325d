"""The fixed point at the edges: float32 at large eps (log domain, no NaN), mu = 1 (the solver
itself, not the module's GAP shortcut)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gspdml.pooling.transport import partial_transport, prototype_cost
from pooling.transport.references import as_t, make_costs


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def cases():
    gen = torch.Generator().manual_seed(0)
    w = unit(torch.randn(8, 16, generator=gen))
    f = unit(torch.randn(4, 20, 16, generator=gen))
    coincide = f.clone()
    coincide[:, 0] = w[0]  # a feature exactly on a prototype (zero cost)
    return {"coincide": prototype_cost(coincide, w), "random": prototype_cost(f, w)}


@pytest.mark.parametrize("name, eps, iters, tol", [
    ("coincide", 100.0, 1000, 2e-5),
    ("random", 100.0, 1000, 2e-5),
    ("coincide", 1000.0, 20000, 2e-4),  # converges slowly (linear rate) at eps = 1000
    ("random", 1000.0, 20000, 2e-4),
])
def test_float32_fixed_point_is_finite_at_large_eps(name, eps, iters, tol):
    """Used to return NaN (linear-domain t overflowed); now finite at 100 steps and, run to
    convergence, equal to the exact solver."""
    c = cases()[name]
    short = partial_transport(c, 0.3, eps, solver="fixed_point")
    for t in short:
        assert torch.isfinite(t).all()
    assert torch.allclose(short.plan.sum((1, 2)), torch.full((4,), 0.3), atol=1e-5)
    exact = partial_transport(c, 0.3, eps)
    long = partial_transport(c, 0.3, eps, solver="fixed_point", iters=iters)
    assert (long.weights - exact.weights).abs().max() <= tol
    assert (long.marginals - exact.marginals).abs().max() <= tol


def test_log_domain_iterates_equal_the_linear_ones_in_float64():
    """The log-domain form changes no iterate: k steps equal k steps of Prop. 4.2 written
    plainly, at a moderate eps where the plain form does not overflow."""
    c = make_costs("random", B=2, m=5, n=9, seed=3)
    mu, eps, k = 0.4, 30.0, 11
    K = np.exp(-eps * c)
    s = K.sum(1)
    t = np.ones((2, 1))
    for _ in range(k):
        rho = (1 / 9) / (1 + t * s)
        t = mu / (s * rho).sum(1, keepdims=True)
    plan = t[:, :, None] * K * rho[:, None, :]
    res = partial_transport(as_t(c), mu, eps, solver="fixed_point", iters=k)
    np.testing.assert_allclose(res.rho.numpy(), rho, rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(res.plan.numpy(), plan, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_point_solver_at_mu_one(dtype):
    """At mu = 1 the solver itself (not the module's shortcut) returns rho = 0, GAP weights and
    the column softmax plan, satisfying the per-feature constraint exactly (it was 1 % off)."""
    c = as_t(make_costs("geometric", B=2, m=4, n=10, seed=5)).to(dtype)
    res = partial_transport(c, 1.0, 5.0, solver="fixed_point")
    assert torch.equal(res.rho, torch.zeros_like(res.rho))
    tol = 1e-6 if dtype == torch.float32 else 1e-15
    assert torch.allclose(res.weights, torch.full_like(res.weights, 0.1), atol=tol)
    assert torch.allclose(res.rho + res.plan.sum(1), torch.full_like(res.rho, 0.1), atol=tol)
    assert torch.allclose(res.plan, torch.softmax(-5.0 * c, dim=1) / 10, atol=tol)
    exact = partial_transport(c, 1.0, 5.0)
    assert torch.allclose(res.marginals, exact.marginals, atol=tol)
    # with padding: uniform over the real features
    mask = torch.tensor([[True] * 6 + [False] * 4, [True] * 10])
    masked = partial_transport(c, 1.0, 5.0, solver="fixed_point", mask=mask)
    assert torch.allclose(masked.weights[0, :6], torch.full((6,), 1 / 6, dtype=dtype), atol=tol)
    assert torch.all(masked.weights[0, 6:] == 0)
    # and the gradient of the limit equals the exact solver's
    x1, x2 = c.clone().requires_grad_(), c.clone().requires_grad_()
    up = torch.randn(2, 4, dtype=dtype)
    (g_fp,) = torch.autograd.grad((partial_transport(x1, 1.0, 5.0, solver="fixed_point").marginals * up).sum(), x1)
    (g_ex,) = torch.autograd.grad((partial_transport(x2, 1.0, 5.0).marginals * up).sum(), x2)
    assert torch.allclose(g_fp, g_ex, atol=1e-5 if dtype == torch.float32 else 1e-13)
