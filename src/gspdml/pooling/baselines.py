"""Baseline global poolings and the GSP combinations of the paper's Table 2.

Every pooling here follows the contract of :class:`gspdml.pooling.gsp.GSP`:
``forward(x, mask=None, return_details=False)`` where ``x`` is a feature map ``(B, C, H, W)`` or a
token set ``(B, N, C)``; ``mask`` is an optional bool tensor (``True`` = real position) of shape
``(B, N)`` for token sets or ``(B, H, W)``/``(B, H*W)`` for maps. The output is ``(B, C)``; with
``return_details=True`` it is ``(pooled, details)`` where ``details["weights"]`` has the spatial
shape of the input (``(B, H, W)`` or ``(B, N)``), is zero on masked positions and sums to one per
sample, and ``details["marginals"]`` holds GSP's prototype marginals (combinations) or ``None``.

What ``weights`` means for each pooling:

====================  ==========================================================================
``gap``               uniform over the real positions
``gmp``               fraction of channels whose maximum is attained at the position (argmax)
``gap+gmp``           mean of the two above
``gem``               per position, its share of ``sum_j x_jc^p`` averaged over channels
``lse``               per position, its share of ``sum_j exp(r x_jc)`` averaged over channels
``delf``              the normalised softplus attention scores
``attention``         the softmax attention
``gmp+gsp/gem+gsp``   GSP's pooling weights
====================  ==========================================================================

Adding a pooling is one new module with a class decorated by
:func:`gspdml.pooling.registry.register_pooling` (and listing the module in
``gspdml.pooling.registry.BUILTIN_MODULES`` if it ships with gspdml).
"""
from __future__ import annotations

import abc
import inspect
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.registry import register_pooling

__all__ = [
    "Pooling",
    "GAP",
    "GMP",
    "GAPGMP",
    "GeM",
    "LSEPooling",
    "DeLFPooling",
    "AttentionPooling",
    "GMPGSP",
    "GeMGSP",
    "flatten_features",
]


def flatten_features(
    x: Tensor, mask: Optional[Tensor], dim: Optional[int], where: str = "pooling"
) -> tuple[Tensor, Optional[Tensor], tuple[int, ...]]:
    """Turn a map ``(B, C, H, W)`` or a token set ``(B, N, C)`` into ``(B, n, C)`` features.

    Returns ``(features, mask, spatial_shape)`` where ``mask`` is ``None`` or a bool ``(B, n)``
    tensor and ``spatial_shape`` is ``(H, W)`` for maps or ``(N,)`` for token sets (used to give the
    pooling weights the input's spatial shape). Raises :class:`InputError` on bad shapes, a
    non-bool mask, or a sample whose positions are all masked.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{where}: expected a tensor input, got {type(x).__name__}")
    if x.dim() == 4:
        b, c, h, w = x.shape
        feats = x.flatten(2).transpose(1, 2)
        spatial: tuple[int, ...] = (h, w)
    elif x.dim() == 3:
        b, n, c = x.shape
        feats = x
        spatial = (n,)
    else:
        raise InputError(
            f"{where}: expected a feature map (B, C, H, W) or a token set (B, N, C), "
            f"got a tensor of shape {tuple(x.shape)}"
        )
    if dim is not None and c != dim:
        layout = "(B, C, H, W)" if x.dim() == 4 else "(B, N, C)"
        raise InputError(
            f"{where}: input has {c} channels (layout {layout}, shape {tuple(x.shape)}) "
            f"but the pooling was built for dim={dim}"
        )
    n = feats.shape[1]
    if n == 0:
        raise InputError(f"{where}: input has no spatial positions/tokens (shape {tuple(x.shape)})")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise InputError(
                f"{where}: mask must be a bool tensor (True = real position), "
                f"got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        if mask.shape[0] != b or mask.numel() != b * n:
            raise InputError(
                f"{where}: mask of shape {tuple(mask.shape)} does not match the input "
                f"{tuple(x.shape)}; expected {(b, *spatial)} or {(b, n)}"
            )
        mask = mask.reshape(b, n).to(feats.device)
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise InputError(f"{where}: samples {rows} have every position masked out")
    return feats, mask, spatial


def _real_count(feats: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Number of real positions per sample, shape (B, 1), in the features' dtype."""
    if mask is None:
        return feats.new_full((feats.shape[0], 1), float(feats.shape[1]))
    return mask.sum(dim=1, keepdim=True).to(feats.dtype)


def _uniform(feats: Tensor, mask: Optional[Tensor]) -> Tensor:
    b, n = feats.shape[:2]
    if mask is None:
        return feats.new_full((b, n), 1.0 / n)
    m = mask.to(feats.dtype)
    return m / m.sum(dim=1, keepdim=True)


def _masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over dim 1 of ``values`` (B, n, C) counting only real positions."""
    if mask is None:
        return values.mean(dim=1)
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(dim=1) / m.sum(dim=1)


def _masked_max(values: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    if mask is not None:
        values = values.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return values.max(dim=1)


def _argmax_fraction(argmax: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(B, C) argmax positions -> (B, n) fraction of channels peaking at each position."""
    b, c = argmax.shape
    counts = torch.zeros(b, n, dtype=dtype, device=argmax.device)
    counts.scatter_add_(1, argmax, torch.ones(b, c, dtype=dtype, device=argmax.device))
    return counts / c


def _channel_shares(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    """(B, n, C) non-negative scores -> (B, n) per-channel shares averaged over channels."""
    if mask is not None:
        scores = scores * mask.unsqueeze(-1).to(scores.dtype)
    shares = scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return shares.mean(dim=2)


class Pooling(nn.Module, abc.ABC):
    """Base class: validates and flattens the input, then calls :meth:`pool`.

    Subclasses implement ``pool(feats (B, n, C), mask (B, n) | None) -> (pooled (B, C),
    weights (B, n), marginals (B, m) | None)``.
    """

    name = "pooling"

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise InputError(f"{type(self).__name__}: dim must be a positive int, got {dim!r}")
        self.dim = dim

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        """Keyword arguments accepted by the constructor besides ``dim`` (for config validation)."""
        params = inspect.signature(cls.__init__).parameters
        return [
            p.name
            for p in params.values()
            if p.name not in ("self", "dim") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    @abc.abstractmethod
    def pool(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Pool (B, n, C) features (+ (B, n) mask) into ``(pooled (B, C), weights (B, n), marginals or None)``."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, return_details: bool = False):
        feats, mask, spatial = flatten_features(x, mask, self.dim, where=f"{self.name} pooling")
        pooled, weights, marginals = self.pool(feats, mask)
        if not return_details:
            return pooled
        return pooled, {"weights": weights.reshape(feats.shape[0], *spatial), "marginals": marginals}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register_pooling("gap")
class GAP(Pooling):
    """Global average pooling (over the real positions when a mask is given)."""

    name = "gap"

    def pool(self, feats, mask):
        return _masked_mean(feats, mask), _uniform(feats, mask), None


@register_pooling("gmp")
class GMP(Pooling):
    """Global max pooling. Weights: fraction of channels whose maximum sits at each position."""

    name = "gmp"

    def pool(self, feats, mask):
        pooled, argmax = _masked_max(feats, mask)
        return pooled, _argmax_fraction(argmax, feats.shape[1], feats.dtype), None


@register_pooling("gap+gmp")
class GAPGMP(Pooling):
    """Sum of global average and global max pooling (as used by ProxyAnchor, XBM, ...)."""

    name = "gap+gmp"

    def pool(self, feats, mask):
        mx, argmax = _masked_max(feats, mask)
        pooled = _masked_mean(feats, mask) + mx
        weights = 0.5 * (_uniform(feats, mask) + _argmax_fraction(argmax, feats.shape[1], feats.dtype))
        return pooled, weights, None


def _gem(feats: Tensor, mask: Optional[Tensor], p: Tensor, clamp_eps: float) -> tuple[Tensor, Tensor]:
    powered = feats.clamp(min=clamp_eps).pow(p)
    pooled = _masked_mean(powered, mask).pow(1.0 / p)
    return pooled, _channel_shares(powered, mask)


@register_pooling("gem")
class GeM(Pooling):
    """Generalised mean pooling (Radenović et al.): ``(mean_j max(x_j, eps)^p)^(1/p)``.

    ``p`` is learnable (``learn_p=True``) and starts at 3; ``p = 1`` is GAP on non-negative
    inputs, ``p -> inf`` approaches GMP. Inputs are clamped at ``clamp_eps`` (GeM is defined on
    non-negative features).
    """

    name = "gem"

    def __init__(self, dim: int, p: float = 3.0, clamp_eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__(dim)
        if p <= 0:
            raise InputError(f"gem pooling: p must be > 0, got {p}")
        if clamp_eps <= 0:
            raise InputError(f"gem pooling: clamp_eps must be > 0, got {clamp_eps}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.clamp_eps = clamp_eps

    def pool(self, feats, mask):
        pooled, weights = _gem(feats, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p={float(self.p):.3f}, clamp_eps={self.clamp_eps}"


@register_pooling("lse")
class LSEPooling(Pooling):
    """Log-sum-exp pooling ``(1/r) log mean_j exp(r x_j)`` with learnable sharpness ``r > 0``.

    ``r -> 0`` gives GAP and ``r -> inf`` gives GMP. ``r`` is stored as ``log r`` so it stays positive.
    """

    name = "lse"

    def __init__(self, dim: int, r: float = 5.0, learn_r: bool = True) -> None:
        super().__init__(dim)
        if r <= 0:
            raise InputError(f"lse pooling: r must be > 0, got {r}")
        self.log_r = nn.Parameter(torch.tensor(float(r)).log(), requires_grad=learn_r)

    @property
    def r(self) -> Tensor:
        return self.log_r.exp()

    def pool(self, feats, mask):
        r = self.r.to(feats.dtype)
        scaled = r * feats
        if mask is not None:
            scaled = scaled.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        lse = torch.logsumexp(scaled, dim=1)
        pooled = (lse - _real_count(feats, mask).log()) / r
        shares = torch.softmax(scaled, dim=1).mean(dim=2)
        return pooled, shares, None


@register_pooling("delf")
class DeLFPooling(Pooling):
    """DeLF-style attention pooling (Noh et al. 2017) adapted to global pooling.

    A score network (1x1 conv ``dim -> hidden``, ReLU, 1x1 conv ``hidden -> 1``, softplus)
    gives a non-negative score ``a_j`` per position; the output is ``(1/n) sum_j a_j f_j``
    (DeLF's attention-weighted sum, divided by the number of real positions so that ``a = 1``
    is GAP). Reported weights are ``a_j / sum_k a_k``.
    """

    name = "delf"

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__(dim)
        # 1x1 convolutions on a map == linear layers on the flattened positions.
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def pool(self, feats, mask):
        a = F.softplus(self.score(feats).squeeze(-1))
        if mask is not None:
            a = a * mask.to(a.dtype)
        pooled = (a.unsqueeze(-1) * feats).sum(dim=1) / _real_count(feats, mask)
        weights = a / a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.score[0].out_features}"


@register_pooling("attention")
class AttentionPooling(Pooling):
    """Learned-attention average: softmax over positions of a linear score ``w . f_j``.

    The "any reweighting" baseline: ``w`` starts at zero, so the layer starts as exact GAP and
    learns to reweight positions freely (no transport constraint, unlike GSP).
    """

    name = "attention"

    def __init__(self, dim: int, temperature: float = 1.0) -> None:
        super().__init__(dim)
        if temperature <= 0:
            raise InputError(f"attention pooling: temperature must be > 0, got {temperature}")
        self.score = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)
        self.temperature = temperature

    def pool(self, feats, mask):
        logits = self.score(feats).squeeze(-1) / self.temperature
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return torch.einsum("bn,bnc->bc", weights, feats), weights, None


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
            from gspdml.pooling.gsp import GSP

            gsp = GSP(dim, **gsp_kwargs)
        elif gsp_kwargs:
            raise InputError(
                f"{self.name} pooling: pass either a ready gsp module or GSP keyword arguments, "
                f"not both (got {sorted(gsp_kwargs)})"
            )
        self.gsp = gsp

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        own = super().accepted_arguments()
        try:
            from gspdml.pooling.gsp import GSP

            params = inspect.signature(GSP.__init__).parameters
            gsp_args = [p for p in params if p not in ("self", "dim", "args", "kwargs")]
        except ImportError:
            gsp_args = []
        return own + [a for a in gsp_args if a not in own]

    def _weighted(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Any]:
        gsp_pooled, details = self.gsp(feats, mask=mask, return_details=True)
        weights = details["weights"].reshape(feats.shape[0], feats.shape[1])
        if mask is not None:
            weights = weights * mask.to(weights.dtype)
        scale = _real_count(feats, mask) * weights
        return gsp_pooled, feats * scale.unsqueeze(-1), weights, details.get("marginals")


@register_pooling("gmp+gsp")
class GMPGSP(_GSPCombination):
    """GMP+GSP: GSP output plus max pooling over the GSP-weighted map (``mu = 1``: GAP+GMP)."""

    name = "gmp+gsp"

    def pool(self, feats, mask):
        gsp_pooled, weighted, weights, marginals = self._weighted(feats, mask)
        mx, _ = _masked_max(weighted, mask)
        return gsp_pooled + mx, weights, marginals


@register_pooling("gem+gsp")
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
        if p <= 0:
            raise InputError(f"gem+gsp pooling: p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.clamp_eps = clamp_eps

    def pool(self, feats, mask):
        _, weighted, weights, marginals = self._weighted(feats, mask)
        pooled, _ = _gem(weighted, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, marginals
