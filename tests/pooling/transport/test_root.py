"""The exact solver's root: fixed step budget against today's (pre-issue-15) Newton loop, frozen
here, and against plain bisection, over extreme eps, mu, clustered and padded inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")

from gspdml.pooling.transport import partial_transport
from gspdml.pooling.transport.exact import _newton_error_bound, _solve_root, root_schedule, spread_bound
from gspdml.pooling.transport.kernel import gibbs_kernel
from pooling.transport.references import as_t, make_costs


def frozen_old_root(a: np.ndarray, count: np.ndarray, mu: float) -> np.ndarray:
    """The solver's root before issue 15 (numpy bookkeeping, adaptive stop), kept as a reference:
    bracketed Newton from ``logit(mu) - mean(a)`` with a bisection fallback, run to its stop."""
    logit_mu = math.log(mu) - math.log1p(-mu)
    real = np.isfinite(a)
    a_max = a.max(1)
    a_min = np.where(real, a, np.inf).min(1)
    a_mean = np.where(real, a, 0.0).sum(1) / count
    lo, hi = logit_mu - a_max, logit_mu - a_min
    u = logit_mu - a_mean
    target = mu * count
    step_tol = math.sqrt(2.0 * 2.0 ** -53)
    for _ in range(100):
        x = 1.0 / (1.0 + np.exp(-(a + u[:, None])))
        F, Q = x.sum(1), np.sqrt((x * x).sum(1))
        f = F - target
        below = f < 0
        lo = np.where(below, u, lo)
        hi = np.where(below, hi, u)
        step = f / np.maximum(F - Q * Q, 1e-300)
        new = u - step
        ok = (new >= lo) & (new <= hi)
        if ok.all():
            u = new
            if np.abs(step).max() <= step_tol:
                break
        else:
            u = np.where(ok, new, 0.5 * (lo + hi))
            if ((hi - lo) <= 4e-16 * (1.0 + np.abs(u))).all():
                break
    return u


def bisection_root(a: np.ndarray, count: np.ndarray, mu: float) -> np.ndarray:
    """Plain bisection to the end of float64 (the root of the complement form for mu > 1/2)."""
    logit_mu = math.log(mu) - math.log1p(-mu)
    real = np.isfinite(a)
    lo = logit_mu - a.max(1)
    hi = logit_mu - np.where(real, a, np.inf).min(1)
    for _ in range(200):  # a bracket of width < 2^80 collapses to adjacent doubles
        mid = 0.5 * (lo + hi)
        x = a + mid[:, None]
        if mu > 0.5:
            r = (1 - mu) * count - np.where(real, 1.0 / (1.0 + np.exp(x)), 0.0).sum(1)
        else:
            r = (1.0 / (1.0 + np.exp(-x))).sum(1) - mu * count
        lo, hi = np.where(r < 0, mid, lo), np.where(r < 0, hi, mid)
    return 0.5 * (lo + hi)


def sigmas(a: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = a + u[:, None]
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x)), 1.0 / (1.0 + np.exp(x))


def logsumexp_a(c: np.ndarray, eps: float) -> np.ndarray:
    """a_j = logsumexp_i(-eps c_ij) of a (B, m, n) cost, in float64 numpy."""
    z = -eps * c
    zmax = z.max(1, keepdims=True)
    return (zmax + np.log(np.exp(z - zmax).sum(1, keepdims=True)))[:, 0]


def new_root(a: np.ndarray, real, count, mu: float, width: float) -> np.ndarray:
    at = torch.from_numpy(a)
    return _solve_root(at, real, count, mu, width).numpy()


EPS = [1e-3, 0.1, 5.0, 50.0, 1e3]
MUS = [1e-4, 0.05, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6]


@pytest.mark.parametrize("kind", ["random", "geometric", "clustered"])
@pytest.mark.parametrize("eps", EPS)
def test_fixed_budget_root_equals_old_solver_and_bisection(kind, eps):
    """Outputs sigma (and 1 - sigma) of the fixed-budget root equal those of today's solver and of
    bisection to <= 1e-12 (float64), over extreme eps and mu; costs in [0, 2] (GSP's range)."""
    B, m, n = 4, 6, 23
    c = make_costs(kind, B=B, m=m, n=n, seed=int(1000 * eps) % 97)
    a = logsumexp_a(c, eps)
    width = spread_bound(eps, 2.0, m)
    assert a.max(1).max() - a.min(1).min() <= width
    count = np.full(B, float(n))
    for mu in MUS:
        u = new_root(a, None, None, mu, width)
        s_new, sc_new = sigmas(a, u)
        for ref in (frozen_old_root(a, count, mu), bisection_root(a, count, mu)):
            s_ref, sc_ref = sigmas(a, ref)
            assert np.abs(s_new - s_ref).max() <= 1e-12, (mu, np.abs(s_new - s_ref).max())
            assert np.abs(sc_new - sc_ref).max() <= 1e-12, mu
        # and the constraint itself: mean sigma = mu
        assert abs(s_new.sum(1) / n - mu).max() <= 1e-13


@pytest.mark.parametrize("eps", [5.0, 1e3])
def test_root_with_padding_and_tight_clusters(eps):
    """Padded samples (different counts) and features in two tight clusters far apart (a spread
    of the whole budgeted width), with mu n an exact integer (the flat case) and not."""
    rng = np.random.default_rng(1)
    B, n, m = 6, 20, 8
    a = np.empty((B, n))
    for b in range(B):
        k = 3 + b
        a[b, :k] = math.log(m) - rng.uniform(0, 1e-3, k)  # next to a prototype
        a[b, k:] = -2 * eps + rng.uniform(0, 1e-3, n - k)  # as far as the cost allows
    real = torch.ones(B, n, dtype=torch.bool)
    real[::2, -5:] = False
    a_in = np.where(real.numpy(), a, -np.inf)
    count = real.sum(1)
    width = spread_bound(eps, 2.0, m)
    for mu in (0.05, 0.2, 0.25, 0.3, 1 / 3, 0.6, 0.95):
        u = _solve_root(torch.from_numpy(a_in), real, count, mu, width).numpy()
        cnt = count.double().numpy()
        ref = bisection_root(a_in, cnt, mu)
        s_new, sc_new = sigmas(a_in, u)
        s_ref, sc_ref = sigmas(a_in, ref)
        r = real.numpy()
        assert np.abs(np.where(r, s_new - s_ref, 0)).max() <= 1e-12
        assert np.abs(np.where(r, sc_new - sc_ref, 0)).max() <= 1e-12
        old = frozen_old_root(a_in, cnt, mu)
        assert np.abs(np.where(r, s_new - sigmas(a_in, old)[0], 0)).max() <= 1e-12


def test_schedule_follows_the_error_bound():
    """The schedule: bisections bring the bracket to <= 1, then Newton from |e| <= 1/2 to the
    resolution, with the bound exp(e) - 1 - e written out here."""
    assert root_schedule(14.2, 2.0 ** -53) == (4, 5)
    assert root_schedule(14.2, 2.0 ** -24) == (4, 4)
    assert root_schedule(0.5, 2.0 ** -53) == (0, 5)
    assert root_schedule(2004.2, 2.0 ** -53) == (11, 5)
    e = 0.5
    for _ in range(5):
        e = math.exp(e) - 1 - e
    assert e <= 2.0 ** -53 and _newton_error_bound(0.5) == pytest.approx(math.exp(0.5) - 1.5)


def test_newton_error_bound_holds_on_sums_of_sigmoids():
    """|e_next| <= exp(|e|) - 1 - |e| for one Newton step on random sums of sigmoids (the fact the
    budget rests on), from errors up to 1.2."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        a = rng.normal(0, rng.uniform(0.1, 30), 15)
        mu = rng.uniform(0.01, 0.99)
        r = bisection_root(a[None], np.array([15.0]), mu)[0]
        for e in (-1.2, -0.5, -0.1, 0.1, 0.5, 1.2):
            s = 1 / (1 + np.exp(-(a + r + e)))
            step = (s.sum() - 15 * mu) / (s * (1 - s)).sum()
            assert abs(e - step) <= _newton_error_bound(abs(e)) + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_eps_through_partial_transport(dtype):
    """partial_transport at eps 1e-3 .. 1e3 is finite and feasible (weights sum to one)."""
    c = torch.from_numpy(make_costs("clustered", B=3, m=8, n=30, seed=2)).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for eps in EPS:
        res = partial_transport(c, 0.3, eps)
        assert all(torch.isfinite(t).all() for t in res)
        assert torch.allclose(res.weights.sum(1), torch.ones(3, dtype=dtype), atol=tol)
        assert torch.allclose(res.marginals.sum(1), torch.ones(3, dtype=dtype), atol=tol)


def test_root_for_costs_outside_the_gsp_range():
    """Generic costs (no bound): partial_transport reads their range and budgets for it."""
    c = as_t(make_costs("random", B=2, m=4, n=12, seed=3)) * 300.0 - 50.0
    res = partial_transport(c, 0.3, 2.0)
    a = logsumexp_a(c.numpy(), 2.0)
    ref = bisection_root(a, np.full(2, 12.0), 0.3)
    want = sigmas(a, ref)[0] / (12 * 0.3)
    assert np.abs(res.weights.numpy() - want).max() <= 1e-12


def test_gibbs_a_matches_numpy():
    c = make_costs("geometric", B=2, m=5, n=7, seed=0)
    _, _, a = gibbs_kernel(as_t(c).transpose(1, 2), 3.0, True)
    assert np.abs(a.numpy() - logsumexp_a(c, 3.0)).max() <= 1e-12
