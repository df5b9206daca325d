"""The exact solver against the references: the converged paper iteration, the KKT conditions,
the dual minimum, large eps, float32, and its gradients (gradcheck)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gspdml.pooling.transport import partial_transport
from pooling.transport.references import EPS_GRID, KINDS, as_t, dual_solution, make_costs, reference_iteration


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", EPS_GRID)
def test_exact_equals_converged_fixed_point(kind, eps):
    c = make_costs(kind, B=3, m=5, n=12, seed=int(eps * 10))
    mu = 0.3
    rho_ref, plan_ref = reference_iteration(c, mu, eps)
    res = partial_transport(as_t(c), mu, eps)
    n = c.shape[2]
    assert np.abs(res.rho.numpy() - rho_ref).max() <= 1e-10
    assert np.abs(res.plan.numpy() - plan_ref).max() <= 1e-10
    assert np.abs(res.weights.numpy() - (1.0 / n - rho_ref) / mu).max() <= 1e-10
    assert np.abs(res.marginals.numpy() - plan_ref.sum(2) / mu).max() <= 1e-10
    # the library's own fixed-point solver, run long enough, lands on the same point
    fp = partial_transport(as_t(c), mu, eps, solver="fixed_point", iters=3000)
    assert torch.allclose(fp.rho, res.rho, rtol=0, atol=1e-10)
    assert torch.allclose(fp.plan, res.plan, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mu", [0.05, 0.3, 0.7, 0.95])
def test_constraints_and_kkt_conditions(mu):
    c = make_costs("geometric", B=4, m=6, n=20, seed=3)
    eps = 5.0
    res = partial_transport(as_t(c), mu, eps)
    rho, plan = res.rho.numpy(), res.plan.numpy()
    n = c.shape[2]
    assert (rho >= 0).all() and (plan >= 0).all()
    np.testing.assert_allclose(rho + plan.sum(1), 1.0 / n, rtol=0, atol=1e-15)
    np.testing.assert_allclose(plan.sum((1, 2)), mu, rtol=0, atol=1e-14)
    np.testing.assert_allclose(res.weights.sum(1).numpy(), 1.0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.marginals.sum(1).numpy(), 1.0, rtol=0, atol=1e-13)
    # stationarity of the Lagrangian: log pi_ij + eps c_ij - log rho_j is one constant per sample
    g = np.log(plan) + eps * c - np.log(rho)[:, None, :]
    assert (g.max((1, 2)) - g.min((1, 2))).max() <= 1e-9


def test_matches_dual_minimisation():
    c = make_costs("clustered", B=2, m=4, n=7, seed=5)
    mu, eps = 0.4, 3.0
    res = partial_transport(as_t(c), mu, eps)
    for b in range(2):
        rho, plan = dual_solution(c[b], mu, eps)
        np.testing.assert_allclose(res.rho[b].numpy(), rho, rtol=0, atol=1e-7)
        np.testing.assert_allclose(res.plan[b].numpy(), plan, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_eps_is_finite_and_feasible(dtype):
    c = torch.from_numpy(make_costs("clustered", B=3, m=8, n=30, seed=2)).to(dtype)
    for eps in (50.0, 100.0):
        res = partial_transport(c, 0.3, eps)
        for t in res:
            assert torch.isfinite(t).all()
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        assert torch.allclose(res.weights.sum(1), torch.ones(3, dtype=dtype), atol=tol)
        assert torch.allclose(res.rho + res.plan.sum(1), torch.full_like(res.rho, 1 / 30), atol=tol)


def test_float32_matches_float64():
    c = as_t(make_costs("geometric", B=3, m=6, n=15, seed=7))
    r64 = partial_transport(c, 0.3, 5.0)
    r32 = partial_transport(c.float(), 0.3, 5.0)
    assert r32.weights.dtype == torch.float32
    assert torch.allclose(r32.weights.double(), r64.weights, rtol=1e-5, atol=1e-7)
    assert torch.allclose(r32.plan.double(), r64.plan, rtol=1e-5, atol=1e-8)


def test_gradcheck_exact():
    c = as_t(make_costs("geometric", B=2, m=3, n=5, seed=1)).requires_grad_()
    mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.4, 3.0)), (c,))
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.4, 3.0, mask=mask)), (c,))
    c20 = as_t(make_costs("clustered", B=1, m=3, n=6, seed=2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.3, 20.0)), (c20,))


def test_gradient_of_single_outputs_without_others():
    """Backward with only some outputs used (the others' gradients are undefined, not zero)."""
    c = as_t(make_costs("random", B=2, m=3, n=6)).requires_grad_()
    for i in range(4):
        res = partial_transport(c, 0.3, 5.0)
        (g,) = torch.autograd.grad(res[i].sum() * 0 + (res[i] ** 2).sum(), c)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
