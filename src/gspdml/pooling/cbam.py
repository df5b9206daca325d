"""CBAM pooling: channel attention, then spatial attention, then average pooling and a linear map;
weights: the normalised spatial attention."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, masked_max, masked_mean

__all__ = ["CBAMPooling"]


@POOLINGS.register("cbam")
class CBAMPooling(Pooling):
    """CBAM (Woo et al. 2018) attention followed by global average pooling, as in the GSP
    authors' TF framework (``layers/pooling/cbam.py``).

    Channel attention ``c = sigmoid(MLP(avg_j f_j) + MLP(max_j f_j))`` (shared two-layer MLP
    ``dim -> dim // channel_reduction -> dim``, ReLU, no biases) rescales the channels,
    ``g_j = c * f_j``; spatial attention ``s_j = sigmoid(conv([max_c g_j, mean_c g_j]))`` (one
    ``conv_size x conv_size`` convolution, zero "same" padding, no bias) rescales the positions;
    the output is ``W (1/n sum_j s_j g_j)``. CBAM keeps the dimension, so the map ``W``
    (``dim -> dim``, no bias, Glorot init) is the authors' Dense after the average
    (``project=False`` drops it). Token sets have no spatial layout: there the spatial
    convolution uses its centre tap only (a per-position map of the two descriptors). Masked
    positions hold zero features, get zero spatial attention and are left out of the averages.
    Reported weights are ``s_j / sum_k s_k``.
    """

    name = "cbam"

    def __init__(self, dim: int, channel_reduction: int = 16, conv_size: int = 3, project: bool = True) -> None:
        super().__init__(dim)
        if isinstance(channel_reduction, bool) or not isinstance(channel_reduction, int) or channel_reduction < 1:
            raise InputError(f"cbam pooling: channel_reduction must be a positive integer, got {channel_reduction!r}")
        if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 1 or conv_size % 2 == 0:
            raise InputError(f"cbam pooling: conv_size must be a positive odd integer, got {conv_size!r}")
        hidden = max(1, dim // channel_reduction)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False)
        )
        self.spatial_conv = nn.Conv2d(2, 1, conv_size, padding=conv_size // 2, bias=False)
        self.transform: Optional[nn.Linear] = None
        if project:
            self.transform = nn.Linear(dim, dim, bias=False)
            nn.init.xavier_uniform_(self.transform.weight)
        self.conv_size = conv_size

    def _attention(self, feats: Tensor, mask: Optional[Tensor], spatial) -> tuple[Tensor, Tensor, Tensor]:
        """(channel attention (B, C), spatial attention (B, n), channel-rescaled features (B, n, C))."""
        avg = masked_mean(feats, mask)
        mx = masked_max(feats, mask)[0]
        channel = torch.sigmoid(self.channel_mlp(avg) + self.channel_mlp(mx))
        g = feats * channel.unsqueeze(1)
        desc = torch.stack([g.max(dim=2).values, g.mean(dim=2)], dim=1)  # (B, 2, n): [max, mean]
        if mask is not None:
            desc = desc * mask.unsqueeze(1).to(desc.dtype)
        if spatial is not None:
            logits = self.spatial_conv(desc.reshape(desc.shape[0], 2, *spatial)).flatten(1)
        else:
            centre = self.spatial_conv.weight[0, :, self.conv_size // 2, self.conv_size // 2]
            logits = torch.einsum("bkn,k->bn", desc, centre)
        s = torch.sigmoid(logits)
        if mask is not None:
            s = s * mask.to(s.dtype)
        return channel, s, g

    def pool_spatial(self, feats, mask, spatial):
        _, s, g = self._attention(feats, mask, spatial)
        pooled = masked_mean(g * s.unsqueeze(-1), mask)
        if self.transform is not None:
            pooled = self.transform(pooled)
        weights = s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
        return pooled, weights, None

    def pool(self, feats, mask):
        return self.pool_spatial(feats, mask, None)

    def attention_maps(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """CBAM's attention of input ``x``: channel (B, C) and spatial ((B, H, W) or (B, N))."""
        feats, mask, spatial = self.flatten(x, mask)
        channel, s, _ = self._attention(feats, mask, spatial)
        return channel, s.reshape(self.spatial_shape(feats, spatial))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.channel_mlp[0].out_features}, conv_size={self.conv_size}, "
            f"project={self.transform is not None}"
        )
