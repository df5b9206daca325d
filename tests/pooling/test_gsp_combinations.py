"""GMP+GSP and GeM+GSP: with a stand-in GSP against hand-computed references, and with the real GSP at mu = 1.

The hand-computed references test gspdml's earlier definitions on the projected map (now
``gmp+gsp-projected`` / ``gem+gsp-projected``); the authors' definitions are tested in
tests/models/test_heads.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gspdml.errors import InputError
from gspdml.pooling import POOLINGS, build_pooling
from gspdml.pooling.gsp_combinations import GMPGSP, GeMGSP, ProjectedGeMGSP, ProjectedGMPGSP
from pooling.feature_maps import feature_map

pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


class StubGSP(nn.Module):
    """Contract-following stand-in for GSP with weights softmax(v . f) (v = 0: uniform = mu 1)."""

    def __init__(self, dim, v=None):
        super().__init__()
        self.v = torch.zeros(dim) if v is None else v

    def forward(self, x, mask=None, return_details=False):
        if x.dim() == 4:  # a map (B, C, H, W): its positions as a token set
            x = x.flatten(2).transpose(1, 2)
        logits = x @ self.v
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        w = torch.softmax(logits, dim=1)
        pooled = torch.einsum("bn,bnc->bc", w, x)
        z = torch.full((x.shape[0], 4), 0.25)
        return (pooled, {"weights": w, "marginals": z, "rho": None}) if return_details else pooled


def test_combinations_with_uniform_weights_reduce_to_baselines():
    x = feature_map(positive=True)
    tokens = x.flatten(2).transpose(1, 2)
    gmp_gsp = GMPGSP(5, gsp=StubGSP(5))
    assert torch.allclose(gmp_gsp(x), build_pooling("gap+gmp", 5)(x))
    gem_gsp = GeMGSP(5, gsp=StubGSP(5))
    assert torch.allclose(gem_gsp(tokens), build_pooling("gem", 5)(tokens))
    _, d = gem_gsp(x, return_details=True)
    assert d["weights"].shape == (2, 3, 4) and torch.allclose(d["marginals"], torch.full((2, 4), 0.25))
    assert torch.allclose(ProjectedGMPGSP(5, gsp=StubGSP(5))(x), build_pooling("gap+gmp", 5)(x))
    assert torch.allclose(ProjectedGeMGSP(5, gsp=StubGSP(5))(tokens), build_pooling("gem", 5)(tokens))


def test_combinations_hand_computed_with_nonuniform_weights():
    torch.manual_seed(1)
    tokens = torch.randn(2, 6, 5).abs() + 0.1
    mask = torch.tensor([[True, True, True, True, False, False], [True] * 6])
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5])
    gmp_gsp = ProjectedGMPGSP(5, gsp=StubGSP(5, v))
    gem_gsp = ProjectedGeMGSP(5, p=2.0, gsp=StubGSP(5, v))
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


def test_combinations_with_real_gsp_at_mu_one():
    x = feature_map(positive=True)
    gmp_gsp = build_pooling("gmp+gsp-projected", 5, num_prototypes=4, mu=1.0)
    gem_gsp = build_pooling("gem+gsp-projected", 5, num_prototypes=4, mu=1.0)
    gmp_gsp.eval()
    gem_gsp.eval()
    assert torch.allclose(gmp_gsp(x), build_pooling("gap+gmp", 5)(x), atol=1e-6)
    assert torch.allclose(gem_gsp(x), build_pooling("gem", 5)(x), atol=1e-6)
    assert "mu" in POOLINGS["gmp+gsp"].accepted_arguments()
