"""Per-channel generalised mean (GeM) pooling: one learnable exponent per channel."""
from __future__ import annotations

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling
from gspdml.pooling.gem import generalized_mean, learnable_exponent

__all__ = ["ChannelGeM"]


@POOLINGS.register("gem_channel")
class ChannelGeM(Pooling):
    """GeM with one exponent ``p_c`` per channel: ``(mean_j max(x_jc, eps)^p_c)^(1/p_c)``.

    All ``p_c`` start at ``p`` (so it starts equal to ``gem`` with the same ``p``); with
    ``learn_p=True`` each channel learns its own exponent. Weights as ``gem``: each position's
    share of ``sum_j x_jc^p_c``, averaged over channels.
    """

    name = "gem_channel"

    def __init__(self, dim: int, p: float = 3.0, clamp_eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__(dim)
        self.p = learnable_exponent(p, learn_p, self.where, shape=(dim,))
        if not clamp_eps > 0:
            raise InputError(f"gem_channel pooling: clamp_eps must be > 0, got {clamp_eps}")
        self.clamp_eps = clamp_eps

    def pool(self, feats, mask):
        pooled, weights = generalized_mean(feats, mask, self.p.to(feats.dtype), self.clamp_eps)
        return pooled, weights, None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p_mean={float(self.p.detach().mean()):.3f}, clamp_eps={self.clamp_eps}"
