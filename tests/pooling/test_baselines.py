"""Baseline poolings and the GSP combinations against hand-computed references."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from gspdml.errors import ConfigError, InputError
from gspdml.pooling.baselines import GMPGSP, GeMGSP, Pooling
from gspdml.pooling.registry import POOLINGS, build_pooling, register_pooling



pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


BASELINES = ["gap", "gmp", "gap+gmp", "gem", "lse", "delf", "attention"]
HAS_GSP = importlib.util.find_spec("gspdml.pooling.gsp") is not None


def _map(b=2, c=5, h=3, w=4, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    return x.abs() + 0.1 if positive else x


def test_gap_gmp_values_by_loops():
    x = _map()
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
    x = _map(positive=True)
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
    x = _map()
    lse = build_pooling("lse", 5, r=2.0)
    ref = torch.log(torch.exp(2.0 * x).mean(dim=(2, 3))) / 2.0
    assert torch.allclose(lse(x), ref)
    assert torch.allclose(build_pooling("lse", 5, r=1e-4)(x), build_pooling("gap", 5)(x), atol=1e-3)
    assert torch.allclose(build_pooling("lse", 5, r=500.0)(x), build_pooling("gmp", 5)(x), atol=1e-2)


def test_attention_starts_as_gap_and_matches_softmax_formula():
    x = _map()
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
    x = _map()
    delf = build_pooling("delf", 5, hidden=7)
    tokens = x.flatten(2).transpose(1, 2)
    out, d = delf(x, return_details=True)
    lin1, lin2 = delf.score[0], delf.score[2]
    for i in range(x.shape[0]):
        a = torch.stack([torch.nn.functional.softplus(lin2(torch.relu(lin1(f))))[0] for f in tokens[i]])
        ref = (a[:, None] * tokens[i]).sum(0) / len(a)
        assert torch.allclose(out[i], ref)
        assert torch.allclose(d["weights"][i].flatten(), a / a.sum())


@pytest.mark.parametrize("name", BASELINES)
def test_map_and_token_layouts_agree(name):
    x = _map(positive=True)
    pool = build_pooling(name, 5)
    tokens = x.flatten(2).transpose(1, 2)
    out_map, d_map = pool(x, return_details=True)
    out_tok, d_tok = pool(tokens, return_details=True)
    assert out_map.shape == (2, 5)
    assert torch.allclose(out_map, out_tok)
    assert d_map["weights"].shape == (2, 3, 4) and d_tok["weights"].shape == (2, 12)
    assert torch.allclose(d_map["weights"].flatten(1), d_tok["weights"])
    assert torch.allclose(d_tok["weights"].sum(1), torch.ones(2))
    assert d_tok["marginals"] is None


@pytest.mark.parametrize("name", BASELINES)
def test_mask_equals_dropping_tokens(name):
    torch.manual_seed(0)
    tokens = torch.randn(2, 6, 5).abs() + 0.1
    mask = torch.tensor([[True, True, False, True, False, True], [True] * 6])
    pool = build_pooling(name, 5)
    out, d = pool(tokens, mask=mask, return_details=True)
    # sample 0 with its masked tokens removed
    ref = pool(tokens[0:1, mask[0]])
    assert torch.allclose(out[0:1], ref)
    assert torch.all(d["weights"][0, ~mask[0]] == 0)
    assert torch.allclose(d["weights"].sum(1), torch.ones(2))
    # masked values never matter
    poisoned = tokens.clone()
    poisoned[0, ~mask[0]] = 1e6
    assert torch.allclose(pool(poisoned, mask=mask), out)


def test_bad_inputs():
    gap = build_pooling("gap", 5)
    with pytest.raises(InputError, match="channels"):
        gap(torch.randn(2, 4, 3, 3))
    with pytest.raises(InputError, match="feature map"):
        gap(torch.randn(5))
    with pytest.raises(InputError, match="bool"):
        gap(torch.randn(2, 3, 5), mask=torch.ones(2, 3))
    with pytest.raises(InputError, match="every position masked"):
        gap(torch.randn(2, 3, 5), mask=torch.tensor([[True, False, False], [False] * 3]))
    with pytest.raises(InputError, match="does not match"):
        gap(torch.randn(2, 3, 5), mask=torch.ones(2, 4, dtype=torch.bool))


def test_registry_errors_and_registration():
    with pytest.raises(ConfigError, match="valid choices are: .*gap.*gem"):
        build_pooling("avg", 5)
    with pytest.raises(ConfigError, match=r"'gem' does not accept argument\(s\) q; accepted arguments: p"):
        build_pooling("gem", 5, q=2)
    assert build_pooling(" GAP ", 5).__class__ is POOLINGS["gap"]
    for name in ["gap", "gmp", "gap+gmp", "gem", "delf", "attention", "gmp+gsp", "gem+gsp", "lse"]:
        assert name in POOLINGS

    @register_pooling("test-first-token")
    class FirstToken(Pooling):
        name = "test-first-token"

        def pool(self, feats, mask):
            w = torch.zeros(feats.shape[:2], dtype=feats.dtype)
            w[:, 0] = 1
            return feats[:, 0], w, None

    try:
        pool = build_pooling("test-first-token", 3)
        x = torch.randn(2, 4, 3)
        assert torch.equal(pool(x), x[:, 0])
        with pytest.raises(ConfigError, match="already registered"):
            register_pooling("gap")(FirstToken)
    finally:
        POOLINGS.pop("test-first-token")


class StubGSP(nn.Module):
    """Contract-following stand-in for GSP with weights softmax(v . f) (v = 0: uniform = mu 1)."""

    def __init__(self, dim, v=None):
        super().__init__()
        self.v = torch.zeros(dim) if v is None else v

    def forward(self, x, mask=None, return_details=False):
        logits = x @ self.v
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        w = torch.softmax(logits, dim=1)
        pooled = torch.einsum("bn,bnc->bc", w, x)
        z = torch.full((x.shape[0], 4), 0.25)
        return (pooled, {"weights": w, "marginals": z, "rho": None}) if return_details else pooled


def test_combinations_with_uniform_weights_reduce_to_baselines():
    x = _map(positive=True)
    tokens = x.flatten(2).transpose(1, 2)
    gmp_gsp = GMPGSP(5, gsp=StubGSP(5))
    assert torch.allclose(gmp_gsp(x), build_pooling("gap+gmp", 5)(x))
    gem_gsp = GeMGSP(5, gsp=StubGSP(5))
    assert torch.allclose(gem_gsp(tokens), build_pooling("gem", 5)(tokens))
    _, d = gem_gsp(x, return_details=True)
    assert d["weights"].shape == (2, 3, 4) and torch.allclose(d["marginals"], torch.full((2, 4), 0.25))


def test_combinations_hand_computed_with_nonuniform_weights():
    torch.manual_seed(1)
    tokens = torch.randn(2, 6, 5).abs() + 0.1
    mask = torch.tensor([[True, True, True, True, False, False], [True] * 6])
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5])
    gmp_gsp = GMPGSP(5, gsp=StubGSP(5, v))
    gem_gsp = GeMGSP(5, p=2.0, gsp=StubGSP(5, v))
    out1, d1 = gmp_gsp(tokens, mask=mask, return_details=True)
    out2 = gem_gsp(tokens, mask=mask)
    for i in range(2):
        f = tokens[i, mask[i]]
        p = torch.softmax(f @ v, dim=0)
        n = len(f)
        weighted = n * p[:, None] * f
        ref1 = (p[:, None] * f).sum(0) + weighted.max(0).values
        ref2 = weighted.pow(2).mean(0).sqrt()
        assert torch.allclose(out1[i], ref1)
        assert torch.allclose(out2[i], ref2)
        assert torch.allclose(d1["weights"][i, mask[i]], p)


def test_combination_argument_errors():
    with pytest.raises(InputError, match="not both"):
        GMPGSP(5, gsp=StubGSP(5), mu=0.5)


@pytest.mark.skipif(not HAS_GSP, reason="gspdml.pooling.gsp not available yet")
def test_combinations_with_real_gsp_at_mu_one():
    x = _map(positive=True)
    gmp_gsp = build_pooling("gmp+gsp", 5, num_prototypes=4, mu=1.0)
    gem_gsp = build_pooling("gem+gsp", 5, num_prototypes=4, mu=1.0)
    gmp_gsp.eval()
    gem_gsp.eval()
    assert torch.allclose(gmp_gsp(x), build_pooling("gap+gmp", 5)(x), atol=1e-6)
    assert torch.allclose(gem_gsp(x), build_pooling("gem", 5)(x), atol=1e-6)
    assert "mu" in POOLINGS["gmp+gsp"].accepted_arguments()
