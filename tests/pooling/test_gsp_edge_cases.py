"""GSP edge cases of issue 15: the kink of max(1, |w|) at initialisation, maps (NCHW and
channels_last) against token sets, gradients included (NaN prototypes: test_gsp.py)."""
from __future__ import annotations

import pytest
import torch

from gspdml.pooling.gsp import GSP
from gspdml.pooling.transport import channels_first, cost_points_by_prototypes, weighted_sum


def naive_cost_nm(feats, protos):
    fb = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1.0)
    wb = protos / protos.norm(dim=-1, keepdim=True).clamp_min(1.0)
    return (fb[:, :, None, :] - wb[None, None, :, :]).pow(2).sum(-1).sqrt()


@pytest.mark.parametrize("init", ["random", "kcenter"])
def test_prototype_gradient_at_initialisation_agrees_between_float32_and_float64(init):
    """Random and k-center prototypes start at norm 1 (the kink of max(1, |w|)): the prototype
    gradient must not depend on how the norm rounds (it differed by 32-39 % before)."""
    torch.manual_seed(3)
    pool = GSP(16, num_prototypes=8, init=init, memory_size=8, mu=0.3, eps=5.0)
    if init == "kcenter":
        pool.train()(torch.randn(8, 16, 2, 2))  # fills the memory: unit-norm prototypes
    assert pool.is_initialized
    assert torch.allclose(pool.prototypes.detach().norm(dim=1), torch.ones(8), atol=1e-6)
    x = torch.nn.functional.normalize(torch.randn(4, 16, 3, 3), dim=1)  # unit-norm features too
    up = torch.randn(4, 16)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        p = GSP(16, num_prototypes=8, init="random", mu=0.3, eps=5.0).to(dtype)
        with torch.no_grad():
            p.prototypes.copy_(pool.prototypes.to(dtype))
        out = p(x.to(dtype))
        (g,) = torch.autograd.grad((out * up.to(dtype)).sum(), p.prototypes)
        grads[dtype] = g.double()
    g32, g64 = grads[torch.float32], grads[torch.float64]
    assert (g32 - g64).norm() / g64.norm() < 1e-4


def test_cost_layouts_agree_and_keep_the_map_layout():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, 5, generator=gen, dtype=torch.float64) * 0.6
    w = (torch.randn(5, 7, generator=gen, dtype=torch.float64) * 0.7).requires_grad_()
    up = torch.randn(3, 20, 5, generator=gen, dtype=torch.float64)
    layouts = {
        "nchw": x.clone(),
        "channels_last": x.clone().contiguous(memory_format=torch.channels_last),
    }
    ref_feats = x.flatten(2).transpose(1, 2).contiguous().requires_grad_()
    ref = naive_cost_nm(ref_feats, w)
    g_ref = torch.autograd.grad((ref * up).sum(), (ref_feats, w))
    for name, m in layouts.items():
        m.requires_grad_()
        feats = m.flatten(2).transpose(1, 2)
        assert channels_first(feats) == (name == "nchw")
        c = cost_points_by_prototypes(feats, w)
        assert torch.allclose(c, ref, atol=1e-13)
        gm, gw = torch.autograd.grad((c * up).sum(), (m, w))
        assert torch.allclose(gm.flatten(2).transpose(1, 2), g_ref[0], atol=1e-12)
        assert torch.allclose(gw, g_ref[1], atol=1e-12)
        if name == "nchw":  # the gradient comes back in the map's own layout, no copy needed
            assert gm.is_contiguous()
        wts = torch.softmax(torch.randn(3, 20, generator=gen, dtype=torch.float64), 1).requires_grad_()
        pooled = weighted_sum(feats, wts)
        assert torch.allclose(pooled, torch.einsum("bn,bnc->bc", wts, ref_feats), atol=1e-13)
        gup = torch.randn(3, 7, generator=gen, dtype=torch.float64)
        g1 = torch.autograd.grad((pooled * gup).sum(), (m, wts))
        g2 = torch.autograd.grad((torch.einsum("bn,bnc->bc", wts, feats) * gup).sum(), (m, wts))
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, atol=1e-13)


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
@pytest.mark.parametrize("C", [6, 136])  # narrow and wide channel counts through the map paths
def test_module_on_maps_equals_tokens_with_gradients(solver, C):
    torch.manual_seed(2)
    pool = GSP(C, num_prototypes=4, init="random", solver=solver).double()
    x = torch.randn(2, C, 3, 4, dtype=torch.float64) * (2.0 / C ** 0.5)
    inputs = {"nchw": x.clone(), "channels_last": x.clone().contiguous(memory_format=torch.channels_last),
              "tokens": x.flatten(2).transpose(1, 2).contiguous()}
    results = {}
    for name, inp in inputs.items():
        inp.requires_grad_()
        out, d = pool(inp, return_details=True)
        loss = out.pow(2).sum() + d["marginals"].pow(2).sum()
        gx, gw = torch.autograd.grad(loss, (inp, pool.prototypes))
        if name == "nchw":
            assert gx.is_contiguous()  # the gradient comes back in the map's layout
        if name != "tokens":
            gx = gx.flatten(2).transpose(1, 2)
        results[name] = (out, gx, gw)
    for name in ("nchw", "channels_last"):
        for a, b in zip(results[name], results["tokens"]):
            assert torch.allclose(a, b, atol=1e-12)
