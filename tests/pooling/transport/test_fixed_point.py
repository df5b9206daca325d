"""The paper's fixed point: its iterates, and its Prop. 4.3 gradients against finite differences and
the exact solver's at convergence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gspdml.pooling.transport import partial_transport
from pooling.transport.references import KINDS, as_t, make_costs


def test_fixed_point_reproduces_the_paper_iterates():
    """Not just the limit: k steps of the library's fixed point equal k steps of Prop. 4.2."""
    c = make_costs("clustered", B=2, m=4, n=10, seed=11)
    mu, eps, k = 0.3, 20.0, 7
    K = np.exp(-eps * c)
    s = K.sum(1)
    t = np.ones((2, 1))
    for _ in range(k):
        rho = (1 / 10) / (1 + t * s)
        t = mu / (s * rho).sum(1, keepdims=True)
    plan = t[:, :, None] * K * rho[:, None, :]
    res = partial_transport(as_t(c), mu, eps, solver="fixed_point", iters=k)
    np.testing.assert_allclose(res.rho.numpy(), rho, rtol=1e-12, atol=1e-17)
    np.testing.assert_allclose(res.plan.numpy(), plan, rtol=1e-12, atol=1e-17)
    exact = partial_transport(as_t(c), mu, eps)
    assert (res.rho - exact.rho).abs().max() > 1e-6  # 7 steps are visibly unconverged here


def test_gradcheck_fixed_point_at_convergence():
    c = as_t(make_costs("geometric", B=2, m=3, n=5, seed=1)).requires_grad_()
    fn = lambda x: tuple(partial_transport(x, 0.4, 3.0, solver="fixed_point", iters=100))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (c,))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", [0.5, 5.0, 20.0])
def test_exact_gradients_equal_converged_fixed_point_gradients(kind, eps):
    """Prop. 4.3's closed-form backward at a converged point == the exact solver's backward."""
    c = as_t(make_costs(kind, B=2, m=4, n=9, seed=4))
    gen = torch.Generator().manual_seed(0)
    ups = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(2, 9), (2, 4, 9), (2, 9), (2, 4)]]

    def grad_of(solver):
        x = c.clone().requires_grad_()
        res = partial_transport(x, 0.3, eps, solver=solver, iters=5000)
        loss = sum((o * u).sum() for o, u in zip(res, ups))
        (g,) = torch.autograd.grad(loss, x)
        return g

    g_exact, g_fp = grad_of("exact"), grad_of("fixed_point")
    assert torch.allclose(g_exact, g_fp, rtol=0, atol=1e-10 * (1 + g_exact.abs().max()))
