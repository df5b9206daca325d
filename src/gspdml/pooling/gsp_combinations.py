"""The GSP combinations of the paper's Table 2, GMP+GSP and GeM+GSP; weights: GSP's pooling weights.

``gmp+gsp`` and ``gem+gsp`` are the authors' TensorFlow definitions (``GeneralizedSumPooling`` in
``tensorflow/framework/layers/pooling/generalized_sum_pooling.py``, switches ``augment_max_pool``
and ``use_gemp``), with ``P`` the bias-free 1x1 projection to ``dim`` and ``p_j`` GSP's weights on
the projected map ``P x`` (``n p_j`` is the TF layer's ``mixing_weights = (1 - n rho_j) / mu``):

- ``gmp+gsp``: ``GSP(P x) + P(GMP(x))`` (max pooling over the *raw* map, then projected);
- ``gem+gsp``: ``P(GeM(n p * x))`` (GeM with learnable ``p`` = 3, inputs clamped at 1e-6, over the
  GSP-weighted *raw* map, then projected); while GSP outputs GAP (k-center initialisation
  pending, warm-up) the output is GSP's, ``GAP(P x)``, as in the TF layer.

They need the raw map and the projection (``uses_raw_features = True``): ``EmbeddingModel`` calls
:meth:`forward_raw` with the raw backbone features and its projection matrix. Called as a plain
pooling on a map with ``dim`` channels (``forward``), ``P`` is the identity.

gspdml's earlier definitions, computed entirely on the projected map, stay as plain poolings:
``gmp+gsp-projected`` (``GSP(P x) + GMP(n p * P x)``) and ``gem+gsp-projected`` (``GeM(n p * P x)``).
"""
from __future__ import annotations

import abc
import inspect
from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, flatten_features, masked_max, real_count
from gspdml.pooling.gem import generalized_mean, learnable_exponent
from gspdml.pooling.gsp import GSP
from gspdml.registry import accepted_arguments

__all__ = ["GMPGSP", "GeMGSP", "ProjectedGMPGSP", "ProjectedGeMGSP"]


class _GSPCombination(Pooling):
    """Shared part of the combinations: the GSP layer (built here or given) on ``dim`` channels.

    ``gsp`` may be given as a ready module (anything following the GSP contract); otherwise one is
    built from the remaining keyword arguments. ``warmup_steps`` is the inner GSP's.
    """

    projects_first = True

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

    @property
    def warmup_steps(self) -> int:
        """The inner GSP's warm-up length (training steps with GAP output)."""
        return self.gsp.warmup_steps

    @warmup_steps.setter
    def warmup_steps(self, steps: int) -> None:
        self.gsp.warmup_steps = steps

    def _gsp_weights(self, local: Tensor, mask: Optional[Tensor], spatial: Optional[tuple] = None
                     ) -> tuple[Tensor, Tensor, Any]:
        """GSP on (B, n, D) features (given to it as a (B, D, H, W) map when ``spatial`` is the
        map's (H, W)): ``(pooled, weights (B, n) zero at padding, marginals)``."""
        inp = local if spatial is None else local.transpose(1, 2).reshape(local.shape[0], local.shape[2], *spatial)
        gsp_pooled, details = self.gsp(inp, mask=mask, return_details=True)
        weights = details["weights"].reshape(local.shape[0], local.shape[1]).to(local.dtype)
        if mask is not None:
            weights = weights * mask.to(weights.dtype)
        return gsp_pooled, weights, details.get("marginals")


class _RawCombination(_GSPCombination):
    """A combination that pools the raw map and projects it with a borrowed matrix ``P`` (D, C_in)."""

    uses_raw_features = True

    def forward_raw(self, raw: Tensor, weight: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                    return_details: bool = False):
        """Pool raw features ``(B, C_in, H, W)`` / ``(B, N, C_in)`` with the projection ``weight``
        (``(dim, C_in)``, bias-free; ``None``: the identity); returns ``(B, dim)`` (and details)."""
        if weight is not None and (weight.dim() != 2 or weight.shape[0] != self.dim):
            raise InputError(f"{self.where}: the projection must be a ({self.dim}, C_in) matrix, "
                             f"got shape {tuple(weight.shape)}")
        in_dim = self.dim if weight is None else int(weight.shape[1])
        feats, mask, spatial = flatten_features(raw, mask, in_dim, where=self.where)
        pooled, weights, marginals = self.combine(feats, weight, mask, spatial)
        if not return_details:
            return pooled
        return pooled, {"weights": weights.reshape(self.spatial_shape(feats, spatial)), "marginals": marginals}

    def pool(self, feats, mask):
        return self.combine(feats, None, mask)

    def pool_spatial(self, feats, mask, spatial):
        return self.combine(feats, None, mask, spatial)

    @staticmethod
    def _project(v: Tensor, weight: Optional[Tensor]) -> Tensor:
        return v if weight is None else F.linear(v, weight.to(v.dtype))

    @abc.abstractmethod
    def combine(self, feats: Tensor, weight: Optional[Tensor], mask: Optional[Tensor],
                spatial: Optional[tuple] = None):
        """(B, n, C_in) raw features (of a map of shape ``spatial``, or a token set: None) ->
        ``(pooled (B, dim), GSP weights (B, n), marginals)``; GSP sees ``P x`` in the input's layout."""


@POOLINGS.register("gmp+gsp")
class GMPGSP(_RawCombination):
    """GMP+GSP as the authors' TF layer (``augment_max_pool``): ``GSP(P x) + P(GMP(x))``.

    While GSP outputs GAP (k-center pending, warm-up) this is ``P(GAP(x) + GMP(x))``, GAP+GMP.
    """

    name = "gmp+gsp"

    def combine(self, feats, weight, mask, spatial=None):
        gsp_pooled, weights, marginals = self._gsp_weights(self._project(feats, weight), mask, spatial)
        mx, _ = masked_max(feats, mask)
        return gsp_pooled + self._project(mx, weight), weights, marginals


def _init_gem(module: nn.Module, p: float, clamp_eps: float, learn_p: bool) -> None:
    """GeM's exponent ``p`` (a parameter when ``learn_p``) and input clamp on ``module``."""
    module.p = learnable_exponent(p, learn_p, module.where)
    if not clamp_eps > 0:
        raise InputError(f"{module.where}: clamp_eps must be > 0, got {clamp_eps}")
    module.clamp_eps = clamp_eps


@POOLINGS.register("gem+gsp")
class GeMGSP(_RawCombination):
    """GeM+GSP as the authors' TF layer (``use_gemp``): ``P(GeM(n p * x))`` with GeM's ``p``
    learnable (init 3), inputs clamped at ``clamp_eps`` (1e-6); ``GAP(P x)`` while GSP outputs GAP."""

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
        _init_gem(self, p, clamp_eps, learn_p)

    def combine(self, feats, weight, mask, spatial=None):
        gap_phase = bool(getattr(self.gsp, "outputs_gap", False))  # decided before this step's call
        gsp_pooled, weights, marginals = self._gsp_weights(self._project(feats, weight), mask, spatial)
        if gap_phase:
            return gsp_pooled, weights, marginals
        mixed = feats * (real_count(feats, mask) * weights).unsqueeze(-1)
        pooled, _ = generalized_mean(mixed, mask, self.p.to(feats.dtype), self.clamp_eps)
        return self._project(pooled, weight), weights, marginals


class _ProjectedCombination(_GSPCombination):
    """gspdml's earlier combinations, on the projected map only: the GSP-weighted map
    ``x~_j = n p_j f_j`` (GAP over it is GSP's output; at ``mu = 1`` it is the plain map)."""

    def _weighted(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Any]:
        gsp_pooled, weights, marginals = self._gsp_weights(feats, mask)
        scale = real_count(feats, mask) * weights
        return gsp_pooled, feats * scale.unsqueeze(-1), weights, marginals


@POOLINGS.register("gmp+gsp-projected")
class ProjectedGMPGSP(_ProjectedCombination):
    """GSP output plus max pooling over the GSP-weighted projected map (``mu = 1``: GAP+GMP)."""

    name = "gmp+gsp-projected"

    def pool(self, feats, mask):
        gsp_pooled, weighted, weights, marginals = self._weighted(feats, mask)
        mx, _ = masked_max(weighted, mask)
        return gsp_pooled + mx, weights, marginals


@POOLINGS.register("gem+gsp-projected")
class ProjectedGeMGSP(_ProjectedCombination):
    """GeM (learnable ``p``, init 3) over the GSP-weighted projected map (``mu = 1``: GeM)."""

    name = "gem+gsp-projected"

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
        _init_gem(self, p, clamp_eps, learn_p)

    def pool(self, feats, mask):
        _, weighted, weights, marginals = self._weighted(feats, mask)
        pooled, _ = generalized_mean(weighted, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, marginals
