"""The pooling base class (input validation and masks written once), the masked reductions, and
the table :data:`POOLINGS` the poolings register into.

Every pooling follows one contract: ``forward(x, mask=None, return_details=False)`` where ``x`` is
a feature map ``(B, C, H, W)`` or a token set ``(B, N, C)``; ``mask`` is an optional bool tensor
(``True`` = real position) of shape ``(B, N)`` for token sets or ``(B, H, W)``/``(B, H*W)`` for
maps. The output is ``(B, C)``; with ``return_details=True`` it is ``(pooled, details)`` where
``details["weights"]`` has the spatial shape of the input (``(B, H, W)`` or ``(B, N)``), is zero on
masked positions and sums to one per sample, and ``details["marginals"]`` holds the prototype
marginals of prototype poolings (GSP and its combinations) or ``None``.
"""
from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.transport.runtime import is_tracing
from gspdml.registry import Registry

__all__ = [
    "POOLINGS",
    "Pooling",
    "flatten_features",
    "masked_mean",
    "masked_max",
    "uniform_weights",
    "real_count",
    "all_finite",
]

#: name -> pooling class; ``dim`` is passed positionally and not checked as a keyword. Use it as
#: ``gspdml.pooling.POOLINGS`` (or from :mod:`gspdml.pooling.registry`): importing it from there
#: registers the built-in poolings; this module only defines the table, so that the pooling
#: modules can register into it without importing each other in a cycle.
POOLINGS = Registry("pooling", skip_args=("dim",))


def _check_mask(mask, x: Tensor, B: int, n: int, spatial: Optional[tuple[int, int]], where: str) -> Tensor:
    """``mask`` as a bool (B, n) tensor on the input's device; every sample needs a real position."""
    expected = [(B, n)] + ([(B, *spatial)] if spatial else [])
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) not in expected:
        shapes = " or ".join(str(s) for s in expected)
        if not isinstance(mask, Tensor):
            got = f"type {type(mask).__name__}"
        elif mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}"
        else:
            got = f"shape {tuple(mask.shape)}, which does not match the input of shape {tuple(x.shape)}"
        raise InputError(f"{where} mask must be a bool tensor of shape {shapes} (True = real feature), got {got}")
    mask = mask.reshape(B, n).to(x.device)
    if is_tracing():  # data-dependent checks run in eager mode only
        return mask
    empty = ~mask.any(1)
    if bool(empty.any()):
        raise InputError(
            f"{where} mask marks no real feature in sample(s) {torch.nonzero(empty).flatten().tolist()} "
            f"(every position masked out); every sample needs at least one"
        )
    return mask


def flatten_features(
    x: Tensor, mask: Optional[Tensor], dim: int, where: str = "pooling", check_finite: bool = False
) -> tuple[Tensor, Optional[Tensor], Optional[tuple[int, int]]]:
    """Validate ``x`` (B, C, H, W) or (B, N, C) and its mask; return ``(features, mask, spatial)``.

    ``features`` is (B, n, C) with zeros at masked positions (padding may hold anything), ``mask``
    None or a bool (B, n) tensor, ``spatial`` ``(H, W)`` for maps and None for token sets.
    Raises :class:`InputError` (messages start with ``where``) on a non-tensor, a wrong rank or
    channel count, non-floating-point or empty input, a bad mask, a sample with every position
    masked, or (``check_finite``) NaN/inf at real positions. The last two checks read values, so
    they run in eager mode only (not under ``torch.compile`` / ``torch.export`` / ``jit.trace``).
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{where} expects a tensor, got an object of type {type(x).__name__}")
    if x.dim() == 4:
        B, C, H, W = x.shape
        if C != dim:
            raise InputError(
                f"{where} (dim={dim}) got a feature map of shape {tuple(x.shape)} with {C} channels: "
                f"expected (B, {dim}, H, W) (channels second)"
            )
        feats, spatial = x.flatten(2).transpose(1, 2), (H, W)
    elif x.dim() == 3:
        B, _, C = x.shape
        if C != dim:
            raise InputError(
                f"{where} (dim={dim}) got a token set of shape {tuple(x.shape)} with {C} channels: "
                f"expected (B, N, {dim}) (channels last)"
            )
        feats, spatial = x, None
    else:
        raise InputError(
            f"{where} expects a feature map (B, C, H, W) or a token set (B, N, C), got a tensor "
            f"with {x.dim()} dimensions and shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise InputError(f"{where} expects floating-point features, got dtype {x.dtype}")
    n = feats.shape[1]
    if B == 0 or n == 0:
        raise InputError(f"{where} got an empty input of shape {tuple(x.shape)}; need B >= 1 and at least one feature")
    if mask is not None:
        mask = _check_mask(mask, x, B, n, spatial, where)
        feats = feats.masked_fill(~mask.unsqueeze(-1), 0.0)
    if check_finite and not is_tracing() and not all_finite(feats):
        real = "real features" if mask is not None else "features"
        raise InputError(f"{where} input contains NaN or infinite values (in the {real}); check the backbone output")
    return feats, mask, spatial


def all_finite(*tensors: Tensor) -> bool:
    """Whether every value of the tensors is finite, with one host read: their minima and maxima
    (one pass each, NaN propagates) instead of an element-wise ``isfinite`` map."""
    ends = torch.stack([v.float() for t in tensors for v in torch.aminmax(_memory_order(t.detach()))])
    return bool(torch.isfinite(ends).all())


def _memory_order(t: Tensor) -> Tensor:
    """``t`` with its dims permuted into memory order (a contiguous view when ``t`` is dense, e.g.
    an NCHW map seen as (B, n, C)), so that full reductions need no copy."""
    if t.is_contiguous():
        return t
    view = t.permute(*sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return view if view.is_contiguous() else t


def real_count(feats: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Number of real positions per sample of (B, n, C) features, shape (B, 1), in their dtype."""
    if mask is None:
        return feats.new_full((feats.shape[0], 1), float(feats.shape[1]))
    return mask.sum(dim=1, keepdim=True).to(feats.dtype)


def uniform_weights(feats: Tensor, mask: Optional[Tensor]) -> Tensor:
    """GAP's weights: (B, n), uniform over the real positions of (B, n, C) features."""
    b, n = feats.shape[:2]
    if mask is None:
        return feats.new_full((b, n), 1.0 / n)
    m = mask.to(feats.dtype)
    return m / m.sum(dim=1, keepdim=True)


def masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over dim 1 of ``values`` (B, n, C) counting only real positions (masked GAP)."""
    if mask is None:
        return values.mean(dim=1)
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(dim=1) / m.sum(dim=1)


def masked_max(values: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Max over dim 1 of ``values`` (B, n, C) over the real positions: ``(max, argmax)``, each (B, C)."""
    if mask is not None:
        values = values.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return values.max(dim=1)


class Pooling(nn.Module, abc.ABC):
    """Base class: validates and flattens the input, then calls :meth:`pool`.

    Subclasses implement ``pool(feats (B, n, C), mask (B, n) | None) -> (pooled (B, C),
    weights (B, n), marginals (B, m) | None)``; masked positions of ``feats`` are zero.
    ``name`` names the pooling in error messages (the class name when empty);
    ``check_finite = True`` makes the input check reject NaN/inf features.
    ``projects_first = True`` makes ``EmbeddingModel(projection="auto")`` put the projection to
    ``local_dim`` before this pooling (the GSP family); False: pool the backbone map, then project.
    """

    name = ""
    check_finite = False
    projects_first = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(
                f"{type(self).__name__}: dim must be a positive integer (number of channels), got {dim!r}"
            )
        self.dim = dim

    @property
    def where(self) -> str:
        """How error messages name this pooling."""
        return f"{self.name} pooling" if self.name else type(self).__name__

    def flatten(self, x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], Optional[tuple]]:
        """:func:`flatten_features` with this pooling's ``dim``, name and finiteness check."""
        return flatten_features(x, mask, self.dim, where=self.where, check_finite=self.check_finite)

    @staticmethod
    def spatial_shape(feats: Tensor, spatial: Optional[tuple]) -> tuple[int, ...]:
        """The shape per-position outputs take: (B, H, W) for maps, (B, N) for token sets."""
        return (feats.shape[0], *spatial) if spatial else tuple(feats.shape[:2])

    @abc.abstractmethod
    def pool(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Pool (B, n, C) features (+ (B, n) mask) into ``(pooled (B, C), weights (B, n), marginals or None)``."""

    def pool_spatial(self, feats: Tensor, mask: Optional[Tensor], spatial: Optional[tuple]):
        """:meth:`pool` with the map's ``(H, W)`` (``None`` for token sets): poolings that need the
        spatial layout (CBAM's spatial attention, NAP's neighbourhood smoothing) override this."""
        return self.pool(feats, mask)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, return_details: bool = False):
        feats, mask, spatial = self.flatten(x, mask)
        pooled, weights, marginals = self.pool_spatial(feats, mask, spatial)
        if not return_details:
            return pooled
        return pooled, {"weights": weights.reshape(self.spatial_shape(feats, spatial)), "marginals": marginals}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
