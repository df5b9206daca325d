"""The GSP combinations of the paper's Table 2: GMP+GSP and GeM+GSP; weights: GSP's pooling weights."""
from __future__ import annotations

import inspect
from typing import Any, Optional

from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, masked_max, real_count
from gspdml.pooling.gem import generalized_mean, learnable_exponent
from gspdml.pooling.gsp import GSP
from gspdml.registry import accepted_arguments

__all__ = ["GMPGSP", "GeMGSP"]


class _GSPCombination(Pooling):
    """Shared part of GMP+GSP and GeM+GSP: run GSP and build the GSP-weighted map.

    The weighted map is ``x~_j = n p_j f_j`` (``p`` = GSP's pooling weights, ``n`` = number of
    real positions), so that GAP over it is exactly GSP's output and, at ``mu = 1`` (``p``
    uniform), it is the plain map. ``gsp`` may be given as a ready module (anything following
    the GSP contract); otherwise one is built from the remaining keyword arguments.
    """

    def __init__(self, dim: int, gsp: Optional[nn.Module] = None, **gsp_kwargs: Any) -> None:
        super().__init__(dim)
        if gsp is None:
            gsp = GSP(dim, **gsp_kwargs)
        elif gsp_kwargs:
            raise InputError(
                f"{self.where}: pass either a ready gsp module or GSP keyword arguments, "
                f"not both (got {sorted(gsp_kwargs)})"
            )
        self.gsp = gsp

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        """The constructor's own keyword arguments, then GSP's (for config validation)."""
        params = inspect.signature(cls.__init__).parameters.values()
        own = [p.name for p in params
               if p.name not in ("self", "dim") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return own + [a for a in accepted_arguments(GSP, skip=("dim",)) if a not in own]

    def _weighted(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Any]:
        gsp_pooled, details = self.gsp(feats, mask=mask, return_details=True)
        weights = details["weights"].reshape(feats.shape[0], feats.shape[1])
        if mask is not None:
            weights = weights * mask.to(weights.dtype)
        scale = real_count(feats, mask) * weights
        return gsp_pooled, feats * scale.unsqueeze(-1), weights, details.get("marginals")


@POOLINGS.register("gmp+gsp")
class GMPGSP(_GSPCombination):
    """GMP+GSP: GSP output plus max pooling over the GSP-weighted map (``mu = 1``: GAP+GMP)."""

    name = "gmp+gsp"

    def pool(self, feats, mask):
        gsp_pooled, weighted, weights, marginals = self._weighted(feats, mask)
        mx, _ = masked_max(weighted, mask)
        return gsp_pooled + mx, weights, marginals


@POOLINGS.register("gem+gsp")
class GeMGSP(_GSPCombination):
    """GeM+GSP: GeM (learnable ``p``, init 3) over the GSP-weighted map (``mu = 1``: GeM)."""

    name = "gem+gsp"

    def __init__(
        self,
        dim: int,
        p: float = 3.0,
        clamp_eps: float = 1e-6,
        learn_p: bool = True,
        gsp: Optional[nn.Module] = None,
        **gsp_kwargs: Any,
    ) -> None:
        super().__init__(dim, gsp=gsp, **gsp_kwargs)
        self.p = learnable_exponent(p, learn_p, self.where)
        self.clamp_eps = clamp_eps

    def pool(self, feats, mask):
        _, weighted, weights, marginals = self._weighted(feats, mask)
        pooled, _ = generalized_mean(weighted, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, marginals
