"""The supplement's poolings, part A: gmaxp, crow, gsop, netvlad, weldon, gem_channel.

Each: shape + gradient, masks (padding has no influence and zero weight), and a reference
against an independent re-computation of the paper's formula on a fixed tensor.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gspdml.errors import InputError
from gspdml.pooling import POOLINGS, build_pooling
from gspdml.pooling.crow import crow_weights
from gspdml.pooling.gmaxp import gmaxp_coefficients
from gspdml.pooling.gsop import masked_covariance
from gspdml.pooling.netvlad import soft_assignment, vlad_residuals

from .feature_maps import feature_map

ZOO = {
    "gmaxp": {},
    "crow": {},
    "gsop": {"reduced": 6},
    "netvlad": {"clusters": 4},
    "weldon": {"k_max": 2, "k_min": 2},
    "gem_channel": {},
}
DIM = 8


def _build(name):
    torch.manual_seed(0)
    return build_pooling(name, DIM, **ZOO[name]).double()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_registered_shape_and_gradient(name):
    assert name in POOLINGS
    pool = _build(name)
    x = feature_map(b=3, c=DIM, h=3, w=4, positive=name == "gem_channel", seed=1).double().requires_grad_()
    out, details = pool(x, return_details=True)
    assert out.shape == (3, DIM) and torch.isfinite(out).all()
    w = details["weights"]
    assert w.shape == (3, 3, 4) and (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=(1, 2)), torch.ones(3, dtype=w.dtype))
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in pool.parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    tokens = x.detach().flatten(2).transpose(1, 2)
    torch.testing.assert_close(pool(tokens), out.detach())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_mask_padding_has_no_influence(name):
    pool = _build(name)
    x = feature_map(b=2, c=DIM, h=2, w=5, positive=name == "gem_channel", seed=2).double().flatten(2).transpose(1, 2)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 3:] = False
    out, details = pool(x, mask=mask, return_details=True)
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), DIM, dtype=x.dtype)
    torch.testing.assert_close(pool(noisy, mask=mask), out)
    assert (details["weights"][~mask] == 0).all()
    for i, n_real in enumerate((6, 3)):
        torch.testing.assert_close(pool(x[i : i + 1, :n_real]), out[i : i + 1])


# ---- GMaxP ------------------------------------------------------------------------------------


def test_gmaxp_solves_its_linear_system_and_the_ridge_problem():
    x = feature_map(b=2, c=5, h=3, w=3, seed=3).double().flatten(2).transpose(1, 2)
    lam = 0.7
    alpha = gmaxp_coefficients(x, None, lam)
    for b in range(2):
        f = x[b].numpy()
        np.testing.assert_allclose((f @ f.T + lam * np.eye(9)) @ alpha[b].numpy(), np.ones(9), atol=1e-10)
        # xi = F^T alpha is the ridge solution argmin ||F xi - 1||^2 + lam ||xi||^2 (primal form)
        xi = np.linalg.solve(f.T @ f + lam * np.eye(5), f.T @ np.ones(9))
        pooled = build_pooling("gmaxp", 5, lam=lam).double()(x[b : b + 1])[0].numpy()
        np.testing.assert_allclose(pooled, xi, atol=1e-10)
        np.testing.assert_allclose(pooled, f.T @ alpha[b].numpy(), atol=1e-10)


def test_gmaxp_equalises_similarities_for_small_lambda():
    # n <= C and independent features: F xi -> 1 as lam -> 0 (every location equally similar)
    x = feature_map(b=1, c=12, h=2, w=3, seed=4).double().flatten(2).transpose(1, 2)
    xi = build_pooling("gmaxp", 12, lam=1e-8).double()(x)
    torch.testing.assert_close(x[0] @ xi[0], torch.ones(6, dtype=x.dtype), atol=1e-5, rtol=0)


def test_gmaxp_rejects_bad_lambda():
    with pytest.raises(InputError, match="lam"):
        build_pooling("gmaxp", 4, lam=0.0)


# ---- CroW -------------------------------------------------------------------------------------


def test_crow_matches_the_paper_formulas():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 6, generator=g, dtype=torch.float64)  # (B, n, C), about half negative
    f = np.maximum(x[0].numpy(), 0.0)
    n, c = f.shape
    s_prime = f.sum(axis=1)
    s = np.sqrt(s_prime / np.sqrt((s_prime**2).sum()))  # a = b = 2
    q = np.array([(f[:, k] > 0).sum() / n for k in range(c)])
    eps = 1e-16
    omega = np.log((c * eps + q.sum()) / (eps + q))
    expected = np.array([sum(s[j] * f[j, k] for j in range(n)) / n * omega[k] for k in range(c)])
    pool = build_pooling("crow", 6).double()
    out, details = pool(x, return_details=True)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(details["weights"][0].numpy(), s / s.sum(), rtol=1e-12)
    spatial, channel = crow_weights(torch.relu(x), None)
    np.testing.assert_allclose(spatial[0].numpy(), s, rtol=1e-12)
    np.testing.assert_allclose(channel[0].numpy(), omega, rtol=1e-12)


def test_crow_sigmoid_occupancy_is_the_tf_variant():
    x = feature_map(b=1, c=3, h=2, w=2, seed=6).double().flatten(2).transpose(1, 2)
    f = torch.relu(x)
    _, channel = crow_weights(f, None, occupancy="sigmoid")
    q = torch.sigmoid(f).mean(dim=1)
    torch.testing.assert_close(channel, torch.log((3e-16 + q.sum(1, keepdim=True)) / (1e-16 + q)))
    with pytest.raises(InputError, match="occupancy"):
        build_pooling("crow", 3, occupancy="nope")


# ---- GSoP -------------------------------------------------------------------------------------


def test_gsop_covariance_equals_numpy():
    x = feature_map(b=2, c=4, h=3, w=3, seed=7).double().flatten(2).transpose(1, 2)
    cov = masked_covariance(x, None)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    cov_masked = masked_covariance(x.masked_fill(~mask.unsqueeze(-1), 0.0), mask)
    for b in range(2):
        np.testing.assert_allclose(cov[b].numpy(), np.cov(x[b].numpy(), rowvar=False, bias=True), atol=1e-12)
    np.testing.assert_allclose(cov_masked[1].numpy(), np.cov(x[1, :5].numpy(), rowvar=False, bias=True), atol=1e-12)


def test_gsop_is_channel_attention_from_the_covariance():
    pool = _build("gsop")
    x = feature_map(b=1, c=DIM, h=2, w=3, seed=8).double().flatten(2).transpose(1, 2)
    # naive re-computation: reduce + relu, covariance, row-wise conv row by row, expand, sigmoid
    r = torch.relu(x[0] @ pool.reduce.weight.T + pool.reduce.bias).detach().numpy()
    cov = np.cov(r, rowvar=False, bias=True)
    rows = np.concatenate(
        [pool.row_weight[i].detach().numpy() @ cov[i] + pool.row_bias[i].detach().numpy() for i in range(6)]
    )
    att = 1 / (1 + np.exp(-(pool.expand.weight.detach().numpy() @ rows + pool.expand.bias.detach().numpy())))
    np.testing.assert_allclose(pool(x)[0].detach().numpy(), x[0].numpy().mean(0) * att, rtol=1e-10)


# ---- NetVLAD ----------------------------------------------------------------------------------


def test_netvlad_assignments_sum_to_one_and_residuals_match_a_loop():
    pool = _build("netvlad")
    x = feature_map(b=2, c=DIM, h=2, w=3, seed=9).double().flatten(2).transpose(1, 2)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    proj = pool.project(x).detach()
    assign = soft_assignment(pool.assign(proj).detach(), mask)
    torch.testing.assert_close(assign.sum(-1), mask.double())
    centres = pool.centres.detach()
    v = vlad_residuals(proj, assign, centres)
    naive = torch.zeros(2, 4, 2, dtype=torch.float64)
    for b in range(2):
        for k in range(4):
            for j in range(6):
                naive[b, k] += assign[b, j, k] * (proj[b, j] - centres[k])
    torch.testing.assert_close(v, naive)
    out = pool(x, mask=mask).detach()
    expected = torch.stack([naive[b] / naive[b].norm(dim=-1, keepdim=True) for b in range(2)]).flatten(1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.view(2, 4, 2).norm(dim=-1), torch.ones(2, 4, dtype=torch.float64))


def test_netvlad_needs_dim_divisible_by_clusters():
    with pytest.raises(InputError, match="divisible"):
        build_pooling("netvlad", 10, clusters=4)


# ---- WELDON -----------------------------------------------------------------------------------


def test_weldon_equals_a_sort_based_recomputation():
    x = feature_map(b=2, c=5, h=3, w=3, seed=10).double().flatten(2).transpose(1, 2)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 2:] = False  # 2 real positions < k: averages what there is
    pool = build_pooling("weldon", 5, k_max=3, k_min=2)
    out = pool(x, mask=mask)
    for b, n_real in enumerate((9, 2)):
        for c in range(5):
            col = np.sort(x[b, :n_real, c].numpy())
            expected = col[::-1][:3].mean() + col[:2].mean()
            assert math.isclose(float(out[b, c]), float(expected), rel_tol=1e-12, abs_tol=1e-12)


def test_weldon_weights_count_selections():
    x = torch.tensor([[[3.0], [1.0], [2.0], [0.0]]], dtype=torch.float64)  # one channel, 4 positions
    _, details = build_pooling("weldon", 1, k_max=1, k_min=1)(x, return_details=True)
    torch.testing.assert_close(details["weights"], torch.tensor([[0.5, 0.0, 0.0, 0.5]], dtype=torch.float64))


# ---- per-channel GeM ---------------------------------------------------------------------------


def test_gem_channel_with_equal_p_equals_gem():
    x = feature_map(b=2, c=5, h=3, w=4, positive=True, seed=11).double()
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) > 0.3
    gem = build_pooling("gem", 5, p=2.5).double()
    chan = build_pooling("gem_channel", 5, p=2.5).double()
    torch.testing.assert_close(chan(x, mask=mask), gem(x, mask=mask))
    torch.testing.assert_close(chan(x, return_details=True)[1]["weights"], gem(x, return_details=True)[1]["weights"])


def test_gem_channel_uses_each_channels_exponent():
    x = feature_map(b=1, c=3, h=2, w=2, positive=True, seed=12).double()
    chan = build_pooling("gem_channel", 3).double()
    with torch.no_grad():
        chan.p.copy_(torch.tensor([1.0, 2.0, 4.0]))
    out = chan(x)[0]
    for c, p in enumerate((1.0, 2.0, 4.0)):
        torch.testing.assert_close(out[c], x[0, c].pow(p).mean().pow(1 / p))
    assert chan.p.shape == (3,) and chan.p.requires_grad
