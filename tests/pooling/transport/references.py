"""Independent references for the transport tests, written here, not taken from the library:
cost generators, the paper's Prop. 4.2 iteration in numpy run to floating-point stagnation, and a
scipy minimisation of the dual problem."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

EPS_GRID = [0.1, 0.5, 5.0, 20.0, 50.0]
KINDS = ["random", "geometric", "clustered"]


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
