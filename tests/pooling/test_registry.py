"""The pooling registry: unknown names, keyword checks, the built-in names, registering a new pooling."""
from __future__ import annotations

import pytest
import torch

from gspdml.errors import ConfigError
from gspdml.pooling import POOLINGS, Pooling, build_pooling

pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


def test_registry_errors_and_registration():
    with pytest.raises(ConfigError, match="valid choices are: .*gap.*gem"):
        build_pooling("avg", 5)
    with pytest.raises(ConfigError, match=r"'gem' does not accept argument\(s\) q; accepted arguments: p"):
        build_pooling("gem", 5, q=2)
    assert build_pooling(" GAP ", 5).__class__ is POOLINGS["gap"]
    for name in ["gap", "gmp", "gap+gmp", "gem", "delf", "attention", "gmp+gsp", "gem+gsp", "lse"]:
        assert name in POOLINGS

    @POOLINGS.register("test-first-token")
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
            POOLINGS.register("gap")(FirstToken)
    finally:
        POOLINGS.unregister("test-first-token")
