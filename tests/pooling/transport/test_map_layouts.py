"""The cost's channels-first map paths (channel-major copy for small maps, batched GEMMs for large
ones, the blocked norms and prototype-gradient sums of large samples) against a naive autograd
reference on token rows."""
from __future__ import annotations

import pytest
import torch

import gspdml.pooling.transport.cost as cost_module
from gspdml.pooling.transport import cost_points_by_prototypes, weighted_sum
from gspdml.pooling.transport.cost import (
    CHANNELS_FIRST_MIN_N,
    MAP_BLOCKED_MIN,
    MAP_FLAT_BACKWARD_MAX_N,
    _map_squared_norms,
    plain_gradient,
)


def naive_cost_nm(feats, protos):
    f = feats / torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp_min(1.0)
    w = protos / torch.linalg.vector_norm(protos, dim=-1, keepdim=True).clamp_min(1.0)
    return ((f.unsqueeze(2) - w.unsqueeze(0).unsqueeze(0)) ** 2).sum(-1).sqrt()


# (B, n, D): small channel-major, large channel-major (blocked norms), batched small and batched
# large (blocked norms, per-sample prototype-gradient sums), both with the flat backward GEMM,
# and batched with batched backward GEMMs
SHAPES = [(3, 12, 6), (3, 49, 400), (2, CHANNELS_FIRST_MIN_N + 2, 8), (3, 144, 128), (2, MAP_FLAT_BACKWARD_MAX_N + 4, 4)]


def test_shapes_cover_every_path():
    assert SHAPES[0][1] < CHANNELS_FIRST_MIN_N and SHAPES[0][1] * SHAPES[0][2] < MAP_BLOCKED_MIN
    assert SHAPES[1][1] < CHANNELS_FIRST_MIN_N and SHAPES[1][1] * SHAPES[1][2] >= MAP_BLOCKED_MIN
    assert SHAPES[2][1] >= CHANNELS_FIRST_MIN_N and SHAPES[2][1] * SHAPES[2][2] < MAP_BLOCKED_MIN
    assert SHAPES[3][1] >= CHANNELS_FIRST_MIN_N and SHAPES[3][1] * SHAPES[3][2] >= MAP_BLOCKED_MIN
    assert SHAPES[2][1] < MAP_FLAT_BACKWARD_MAX_N and SHAPES[3][1] < MAP_FLAT_BACKWARD_MAX_N
    assert SHAPES[4][1] >= MAP_FLAT_BACKWARD_MAX_N


@pytest.mark.parametrize("block", [None, 1 << 9])  # the default; small blocks: blocked norms everywhere
@pytest.mark.parametrize("B,n,D", SHAPES)
def test_map_cost_and_gradients_match_naive_tokens(B, n, D, block, monkeypatch):
    if block is not None:
        monkeypatch.setattr(cost_module, "MAP_NORM_BLOCK", block)
    gen = torch.Generator().manual_seed(B * n + D)
    # norms on both sides of 1 (the normalisation's two branches), for features and prototypes
    scale = torch.rand(B, 1, n, generator=gen, dtype=torch.float64) * 3.0 / D ** 0.5
    base = (torch.randn(B, D, n, generator=gen, dtype=torch.float64) * scale * 1.5)
    m = 5
    protos0 = torch.randn(m, D, generator=gen, dtype=torch.float64)
    protos0 = protos0 / protos0.norm(dim=1, keepdim=True) * torch.tensor([[0.5], [1.5], [0.8], [2.0], [1.2]],
                                                                        dtype=torch.float64)
    up = torch.randn(B, n, m, generator=gen, dtype=torch.float64)
    wts = torch.softmax(torch.randn(B, n, generator=gen, dtype=torch.float64), 1)
    g_pool = torch.randn(B, D, generator=gen, dtype=torch.float64)

    x = base.clone().requires_grad_()
    w = protos0.clone().requires_grad_()
    feats = x.transpose(1, 2)  # channels-first (B, n, D)
    c = cost_points_by_prototypes(feats, w)
    pooled = weighted_sum(feats, wts)
    loss = (c * up).sum() + (pooled * g_pool).sum()
    gx, gw = torch.autograd.grad(loss, (x, w))

    t = base.transpose(1, 2).contiguous().requires_grad_()
    w_ref = protos0.clone().requires_grad_()
    c_ref = naive_cost_nm(t, w_ref)
    loss_ref = (c_ref * up).sum() + (torch.einsum("bn,bnd->bd", wts, t) * g_pool).sum()
    gt, gw_ref = torch.autograd.grad(loss_ref, (t, w_ref))

    assert torch.allclose(c, c_ref, atol=1e-12)
    assert torch.allclose(gx.transpose(1, 2), gt, atol=1e-11)
    assert torch.allclose(gw, gw_ref, atol=1e-11)
    assert gx.is_contiguous()  # the map's own layout


def test_map_squared_norms_match_naive(monkeypatch):
    monkeypatch.setattr(cost_module, "MAP_NORM_BLOCK", 1 << 15)  # 2 samples a block, 4 blocks
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 300, 60, generator=gen, dtype=torch.float64)  # several blocks of samples
    got = _map_squared_norms(x.transpose(1, 2))
    assert got.shape == (7, 60, 1)
    assert torch.allclose(got.squeeze(-1), (x ** 2).sum(1), atol=1e-12)


def test_plain_gradient_drops_the_view_only_outside_graph_building():
    base = torch.randn(2, 4, 3)
    view = base.transpose(1, 2)
    with torch.no_grad():
        out = plain_gradient(view)
    assert not out._is_view() and out.stride() == view.stride() and torch.equal(out, view)
    assert out.data_ptr() == view.data_ptr()  # no copy
    with torch.enable_grad():
        assert plain_gradient(view) is view  # higher-order gradients keep their graph
