"""``partial_transport``: the mu = 1 limit, autocast, padding masks, symmetry, the public alias."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gspdml.functional import partial_transport as partial_transport_alias
from gspdml.pooling.transport import partial_transport
from pooling.transport.references import as_t, make_costs


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


def test_autocast_solves_in_float32():
    c = torch.from_numpy(make_costs("geometric", B=2, m=4, n=10, seed=8)).bfloat16()
    ref = partial_transport(c.float(), 0.3, 5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = partial_transport(c, 0.3, 5.0)
    assert res.weights.dtype == torch.float32
    assert torch.allclose(res.weights, ref.weights, atol=1e-6)
    assert torch.allclose(res.weights.sum(1), torch.ones(2), atol=1e-6)


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
