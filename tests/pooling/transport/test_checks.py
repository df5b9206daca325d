"""Argument and input errors of ``partial_transport`` and ``prototype_cost``."""
from __future__ import annotations

import pytest
import torch

from gspdml.errors import InputError
from gspdml.pooling.transport import partial_transport, prototype_cost


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu=0.0), "mu must be"),
        (dict(mu=1.5), "mu must be"),
        (dict(mu=float("nan")), "mu must be"),
        (dict(eps=0.0), "eps must be"),
        (dict(eps=-2.0), "eps must be"),
        (dict(eps=float("inf")), "eps must be"),
        (dict(solver="sinkhorn"), "solver must be one of"),
        (dict(solver="fixed_point", iters=0), "iters must be"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(mu=0.3, eps=5.0)
    args.update(kwargs)
    c = torch.rand(2, 3, 4)
    with pytest.raises(InputError, match=match):
        partial_transport(c, args.pop("mu"), args.pop("eps"), **args)


def test_invalid_cost_and_mask():
    with pytest.raises(InputError, match=r"\(B, m, n\)"):
        partial_transport(torch.rand(3, 4), 0.3, 5.0)
    with pytest.raises(InputError, match="floating-point"):
        partial_transport(torch.ones(1, 2, 3, dtype=torch.long), 0.3, 5.0)
    with pytest.raises(InputError, match="NaN or infinite"):
        partial_transport(torch.tensor([[[0.0, float("nan")]]]), 0.3, 5.0)
    with pytest.raises(InputError, match="bool tensor of shape"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="bool tensor of shape"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0, mask=torch.ones(2, 4))
    with pytest.raises(InputError, match=r"no real feature in sample\(s\) \[1\]"):
        partial_transport(torch.rand(2, 3, 4), 0.3, 5.0,
                          mask=torch.tensor([[True, False, True, True], [False] * 4]))
    # junk (even NaN) at padded positions is fine
    c = torch.rand(1, 3, 4)
    c[0, :, 3] = float("nan")
    res = partial_transport(c, 0.3, 5.0, mask=torch.tensor([[True, True, True, False]]))
    assert torch.isfinite(res.weights).all()
    with pytest.raises(InputError, match="does not match"):
        prototype_cost(torch.rand(2, 3, 4), torch.rand(5, 6))
    with pytest.raises(InputError, match=r"\(B, n, D\)"):
        prototype_cost(torch.rand(3, 4), torch.rand(5, 4))
    with pytest.raises(InputError, match=r"\(m, D\)"):
        prototype_cost(torch.rand(2, 3, 4), torch.rand(4))
