"""Tests of the GSP transport solvers against independent references.

References written here, not taken from the library: the paper's Prop. 4.2 iteration in numpy
run to floating-point stagnation, a scipy minimisation of the dual problem, the KKT optimality
conditions of (P2), finite differences (gradcheck), and brute-force pairwise distances.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gspdml.errors import InputError
from gspdml.functional import partial_transport as partial_transport_alias
from gspdml.pooling.functional import partial_transport, prototype_cost

EPS_GRID = [0.1, 0.5, 5.0, 20.0, 50.0]
KINDS = ["random", "geometric", "clustered"]


# ----------------------------------------------------------------------------- references


def make_costs(kind: str, B: int, m: int, n: int, seed: int = 0, D: int = 6) -> np.ndarray:
    """(B, m, n) costs: uniform random, distances of unit vectors, or features clustered at prototypes."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.uniform(0.0, 2.0, (B, m, n))
    W = rng.normal(size=(m, D))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    F = rng.normal(size=(B, n, D))
    F /= np.linalg.norm(F, axis=2, keepdims=True)
    if kind == "clustered":
        k = rng.integers(0, m, (B, n))
        near = rng.random((B, n)) < 0.5
        F = np.where(near[..., None], W[k] + 0.05 * rng.normal(size=(B, n, D)), F)
        F /= np.maximum(1.0, np.linalg.norm(F, axis=2, keepdims=True))
    return np.linalg.norm(W[None, :, None, :] - F[:, None, :, :], axis=-1)


def reference_iteration(c: np.ndarray, mu: float, eps: float, max_iter: int = 500_000):
    """Prop. 4.2 in plain numpy, iterated until t stops changing; returns rho (B,n), plan (B,m,n)."""
    B, m, n = c.shape
    K = np.exp(-eps * c)
    s = K.sum(1)
    t = np.ones((B, 1))
    for _ in range(max_iter):
        rho = (1.0 / n) / (1.0 + t * s)
        t_new = mu / (s * rho).sum(1, keepdims=True)
        if np.all(t_new == t):
            break
        t = t_new
    else:  # pragma: no cover - the reference must converge for the test to mean anything
        raise AssertionError("reference iteration did not converge")
    rho = (1.0 / n) / (1.0 + t * s)
    return rho, t[:, :, None] * K * rho[:, None, :]


def dual_solution(c: np.ndarray, mu: float, eps: float):
    """Solve (P2) for one (m, n) cost by minimising its negated concave dual with scipy L-BFGS."""
    m, n = c.shape

    def negdual(v):
        alpha, beta = v[:n], v[n]
        pi = np.exp(-eps * (c + alpha[None, :] + beta) - 1.0)
        rho = np.exp(-eps * alpha - 1.0)
        val = (pi.sum() + rho.sum()) / eps + alpha.sum() / n + beta * mu
        grad = np.concatenate([-pi.sum(0) - rho + 1.0 / n, [-pi.sum() + mu]])
        return val, grad

    res = minimize(negdual, np.zeros(n + 1), jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 10_000})
    alpha, beta = res.x[:n], res.x[n]
    return np.exp(-eps * alpha - 1.0), np.exp(-eps * (c + alpha[None, :] + beta) - 1.0)


def as_t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).double()


# ----------------------------------------------------------------------------- exactness


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


def test_mu_one_gives_average_pooling_weights():
    c = as_t(make_costs("random", B=2, m=3, n=9))
    res = partial_transport(c, 1.0, 5.0)
    assert torch.equal(res.rho, torch.zeros_like(res.rho))
    assert torch.allclose(res.weights, torch.full_like(res.weights, 1 / 9), rtol=0, atol=1e-16)
    # the plan is the column-wise softmax of -eps c, scaled by 1/n
    soft = torch.softmax(-5.0 * c, dim=1) / 9
    assert torch.allclose(res.plan, soft, rtol=0, atol=1e-16)
    # with padding: uniform over the real features only
    mask = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])
    masked = partial_transport(c, 1.0, 5.0, mask=mask)
    assert torch.allclose(masked.weights[0], torch.tensor([0.2] * 5 + [0.0] * 4, dtype=torch.float64), atol=1e-16)
    assert masked.weights.dtype == torch.float64
    # just below 1 the solution is continuous
    near = partial_transport(c, 1.0 - 1e-9, 5.0)
    assert torch.allclose(near.weights, res.weights, rtol=0, atol=1e-8)


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


def test_autocast_solves_in_float32():
    c = torch.from_numpy(make_costs("geometric", B=2, m=4, n=10, seed=8)).bfloat16()
    ref = partial_transport(c.float(), 0.3, 5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = partial_transport(c, 0.3, 5.0)
    assert res.weights.dtype == torch.float32
    assert torch.allclose(res.weights, ref.weights, atol=1e-6)
    assert torch.allclose(res.weights.sum(1), torch.ones(2), atol=1e-6)


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_exact():
    c = as_t(make_costs("geometric", B=2, m=3, n=5, seed=1)).requires_grad_()
    mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.4, 3.0)), (c,))
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.4, 3.0, mask=mask)), (c,))
    c20 = as_t(make_costs("clustered", B=1, m=3, n=6, seed=2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tuple(partial_transport(x, 0.3, 20.0)), (c20,))


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


def test_gradient_of_single_outputs_without_others():
    """Backward with only some outputs used (the others' gradients are undefined, not zero)."""
    c = as_t(make_costs("random", B=2, m=3, n=6)).requires_grad_()
    for i in range(4):
        res = partial_transport(c, 0.3, 5.0)
        (g,) = torch.autograd.grad(res[i].sum() * 0 + (res[i] ** 2).sum(), c)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


# ----------------------------------------------------------------------------- masks and symmetry


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_masked_padded_input_equals_unpadded(solver):
    rng = np.random.default_rng(9)
    lengths = [7, 4, 10]
    m, n_max, mu, eps = 5, 10, 0.3, 5.0
    costs = [as_t(rng.uniform(0, 2, (m, L))) for L in lengths]
    padded = torch.full((3, m, n_max), 1e6, dtype=torch.float64)  # padding holds junk
    mask = torch.zeros(3, n_max, dtype=torch.bool)
    for b, L in enumerate(lengths):
        padded[b, :, :L] = costs[b]
        mask[b, :L] = True
    padded.requires_grad_()
    res = partial_transport(padded, mu, eps, solver=solver, iters=2000, mask=mask)
    loss = (res.weights ** 2).sum() + (res.marginals ** 3).sum()
    (g_pad,) = torch.autograd.grad(loss, padded)
    for b, L in enumerate(lengths):
        x = costs[b].unsqueeze(0).requires_grad_()
        one = partial_transport(x, mu, eps, solver=solver, iters=2000)
        for got, want in [(res.weights[b, :L], one.weights[0]), (res.rho[b, :L], one.rho[0]),
                          (res.plan[b, :, :L], one.plan[0]), (res.marginals[b], one.marginals[0])]:
            assert torch.allclose(got, want, rtol=0, atol=1e-13)
        assert torch.all(res.weights[b, L:] == 0) and torch.all(res.rho[b, L:] == 0)
        assert torch.all(res.plan[b, :, L:] == 0)
        (g_one,) = torch.autograd.grad((one.weights ** 2).sum() + (one.marginals ** 3).sum(), x)
        assert torch.allclose(g_pad[b, :, :L], g_one[0], rtol=0, atol=1e-12)
        assert torch.all(g_pad[b, :, L:] == 0)


def test_permutation_equivariance():
    c = as_t(make_costs("geometric", B=2, m=5, n=11, seed=12))
    perm_n, perm_m = torch.randperm(11), torch.randperm(5)
    base = partial_transport(c, 0.3, 5.0)
    pf = partial_transport(c[:, :, perm_n], 0.3, 5.0)
    assert torch.allclose(pf.weights, base.weights[:, perm_n], atol=1e-15)
    assert torch.allclose(pf.marginals, base.marginals, atol=1e-15)
    pp = partial_transport(c[:, perm_m, :], 0.3, 5.0)
    assert torch.allclose(pp.weights, base.weights, atol=1e-15)
    assert torch.allclose(pp.marginals, base.marginals[:, perm_m], atol=1e-15)


def test_functional_alias_is_the_same_function():
    assert partial_transport_alias is partial_transport


# ----------------------------------------------------------------------------- cost


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


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu=0.0), "mu must be"),
        (dict(mu=1.5), "mu must be"),
        (dict(mu=float("nan")), "mu must be"),
        (dict(eps=0.0), "eps must be"),
        (dict(eps=-2.0), "eps must be"),
        (dict(eps=float("inf")), "eps must be"),
        (dict(solver="sinkhorn"), "solver must be one of"),
        (dict(solver="fixed_point", iters=0), "iters must be"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(mu=0.3, eps=5.0)
    args.update(kwargs)
    c = torch.rand(2, 3, 4)
    with pytest.raises(InputError, match=match):
        partial_transport(c, args.pop("mu"), args.pop("eps"), **args)


def test_invalid_cost_and_mask():
    with pytest.raises(InputError, match=r"\(B, m, n\)"):
        partial_transport(torch.rand(3, 4), 0.3, 5.0)
    with pytest.raises(InputError, match="floating-point"):
        partial_transport(torch.ones(1, 2, 3, dtype=torch.long), 0.3, 5.0)
    with pytest.raises(InputError, match="NaN or infinite"):
        partial_transport(torch.tensor([[[0.0, float("nan")]]]), 0.3, 5.0)
    with pytest.raises(InputError, match="bool tensor of shape"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="bool tensor of shape"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0, mask=torch.ones(2, 4))
    with pytest.raises(InputError, match=r"no real feature in sample\(s\) \[1\]"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0,
                          mask=torch.tensor([[True, False, True, True], [False] * 4]))
    # junk (even NaN) at padded positions is fine
    c = torch.rand(1, 3, 4)
    c[0, :, 3] = float("nan")
    res = partial_transport(c, 0.3, 5.0, mask=torch.tensor([[True, True, True, False]]))
    assert torch.isfinite(res.weights).all()
    with pytest.raises(InputError, match="does not match"):
        prototype_cost(torch.rand(2, 3, 4), torch.rand(5, 6))
    with pytest.raises(InputError, match=r"\(B, n, D\)"):
        prototype_cost(torch.rand(3, 4), torch.rand(5, 4))
    with pytest.raises(InputError, match=r"\(m, D\)"):
        prototype_cost(torch.rand(2, 3, 4), torch.rand(4))


def test_device_generic_code_path(monkeypatch):
    """The code path CUDA takes (torch-only Newton sums, no host-side zero check), run on CPU."""
    import gspdml.pooling.functional as F

    c = make_costs("clustered", B=2, m=4, n=9, seed=6)
    rho_ref, plan_ref = reference_iteration(c, 0.3, 20.0)
    x_fast = as_t(c).requires_grad_()
    (g_fast,) = torch.autograd.grad(partial_transport(x_fast, 0.3, 20.0).weights.pow(2).sum(), x_fast)
    monkeypatch.setattr(F, "_CPU_FAST_PATHS", False)
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
