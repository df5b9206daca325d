"""The baseline poolings (gap, gmp, gap+gmp, gem, lse, attention, delf) against hand-computed references."""
from __future__ import annotations

import pytest
import torch

from gspdml.pooling import build_pooling
from pooling.feature_maps import feature_map

pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


def test_gap_gmp_values_by_loops():
    x = feature_map()
    b, c, h, w = x.shape
    gap, gmp, both = build_pooling("gap", c), build_pooling("gmp", c), build_pooling("gap+gmp", c)
    for i in range(b):
        for k in range(c):
            vals = [x[i, k, r, s].item() for r in range(h) for s in range(w)]
            assert gap(x)[i, k].item() == pytest.approx(sum(vals) / len(vals))
            assert gmp(x)[i, k].item() == pytest.approx(max(vals))
            assert both(x)[i, k].item() == pytest.approx(sum(vals) / len(vals) + max(vals))


def test_gmp_weights_are_argmax_fractions():
    # 2 channels, 3 tokens: channel 0 peaks at token 2, channel 1 at token 0.
    x = torch.tensor([[[0.0, 5.0], [1.0, 2.0], [3.0, -1.0]]])
    _, d = build_pooling("gmp", 2)(x, return_details=True)
    assert torch.allclose(d["weights"], torch.tensor([[0.5, 0.0, 0.5]]))
    assert d["marginals"] is None
    _, d = build_pooling("gap+gmp", 2)(x, return_details=True)
    assert torch.allclose(d["weights"], 0.5 * torch.tensor([[0.5, 0.0, 0.5]]) + 0.5 / 3)


def test_gem_special_cases():
    x = feature_map(positive=True)
    gem1 = build_pooling("gem", 5, p=1.0)
    assert torch.allclose(gem1(x), build_pooling("gap", 5)(x))
    gem3 = build_pooling("gem", 5)  # default p = 3, learnable
    assert gem3.p.requires_grad and gem3.p.item() == 3.0
    ref = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(gem3(x), ref)
    big = build_pooling("gem", 5, p=200.0)
    assert torch.allclose(big(x), build_pooling("gmp", 5)(x), rtol=2e-2)
    # negative inputs are clamped at eps
    neg = -torch.ones(1, 5, 2, 2)
    assert torch.allclose(gem3(neg), torch.full((1, 5), 1e-6))
    # p gets a gradient
    gem3(x).sum().backward()
    assert gem3.p.grad is not None and gem3.p.grad.abs() > 0


def test_lse_limits_and_formula():
    x = feature_map()
    lse = build_pooling("lse", 5, r=2.0)
    ref = torch.log(torch.exp(2.0 * x).mean(dim=(2, 3))) / 2.0
    assert torch.allclose(lse(x), ref)
    assert torch.allclose(build_pooling("lse", 5, r=1e-4)(x), build_pooling("gap", 5)(x), atol=1e-3)
    assert torch.allclose(build_pooling("lse", 5, r=500.0)(x), build_pooling("gmp", 5)(x), atol=1e-2)


def test_attention_starts_as_gap_and_matches_softmax_formula():
    x = feature_map()
    att = build_pooling("attention", 5)
    assert torch.allclose(att(x), build_pooling("gap", 5)(x))
    with torch.no_grad():
        att.score.weight.copy_(torch.tensor([[1.0, -0.5, 0.0, 2.0, 0.3]]))
    tokens = x.flatten(2).transpose(1, 2)
    out, d = att(tokens, return_details=True)
    for i in range(x.shape[0]):
        logits = [float(att.score.weight[0].detach() @ f) for f in tokens[i]]
        z = sum(torch.exp(torch.tensor(logits)))
        w = [torch.exp(torch.tensor(v)) / z for v in logits]
        ref = sum(wj * f for wj, f in zip(w, tokens[i]))
        assert torch.allclose(out[i], ref)
        assert torch.allclose(d["weights"][i], torch.stack(w))


def test_delf_formula():
    x = feature_map()
    delf = build_pooling("delf", 5, hidden=7)
    tokens = x.flatten(2).transpose(1, 2)
    out, d = delf(x, return_details=True)
    lin1, lin2 = delf.score[0], delf.score[2]
    for i in range(x.shape[0]):
        a = torch.stack([torch.nn.functional.softplus(lin2(torch.relu(lin1(f))))[0] for f in tokens[i]])
        ref = (a[:, None] * tokens[i]).sum(0) / len(a)
        assert torch.allclose(out[i], ref)
        assert torch.allclose(d["weights"][i].flatten(), a / a.sum())
