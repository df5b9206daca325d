"""Feature maps shared by the pooling tests."""
from __future__ import annotations

import torch


def feature_map(b=2, c=5, h=3, w=4, positive=False, seed=0):
    """A seeded (b, c, h, w) map; ``positive``: entries >= 0.1 (for GeM, LSE and the combinations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    return x.abs() + 0.1 if positive else x
