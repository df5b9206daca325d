"""The pooling base: every baseline gives the same result on maps and token sets, masks equal
dropping positions, and the input checks."""
from __future__ import annotations

import pytest
import torch

from gspdml.errors import InputError
from gspdml.pooling import build_pooling
from pooling.feature_maps import feature_map

pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


BASELINES = ["gap", "gmp", "gap+gmp", "gem", "lse", "delf", "attention"]


@pytest.mark.parametrize("name", BASELINES)
def test_map_and_token_layouts_agree(name):
    x = feature_map(positive=True)
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
