"""Tiny models shared by the compile / export tests."""
from __future__ import annotations

import torch
from torch import nn

from gspdml.models import EmbeddingModel
from gspdml.pooling.gsp import GSP


class MapBackbone(nn.Module):
    """A conv backbone: (B, 3, H, W) -> (B, 6, H, W)."""

    out_channels = 6
    input_kind = "image"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class TokenBackbone(nn.Module):
    """A token backbone: (B, N, 5) float tokens -> (B, N, 6)."""

    out_channels = 6
    input_kind = "tokens"

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 6)

    def forward(self, x):
        return torch.tanh(self.proj(x))


def gsp_kwargs(**kw):
    args = dict(num_prototypes=4, mu=0.3, eps=5.0, init="random")
    args.update(kw)
    return args


def map_model(pooling: str = "gsp", **kw) -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(MapBackbone(), local_dim=8, pooling=pooling,
                          pooling_kwargs=gsp_kwargs(**kw) if pooling == "gsp" else None)


def token_model(pooling: str = "gsp", **kw) -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(TokenBackbone(), local_dim=8, pooling=pooling,
                          pooling_kwargs=gsp_kwargs(**kw) if pooling == "gsp" else None)


#: channels of the wide map (a second channel count through the channel-major map path)
WIDE = 136


class LayerOnAllLayouts(nn.Module):
    """One GSP layer applied to an NCHW map, a channels_last map and a token set, and a wide one
    to a wide NCHW map (the channel-major path), in one graph (one compilation covers every
    layout and code path), returning pooled outputs, marginals and weights."""

    def __init__(self, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.pool = GSP(8, **gsp_kwargs(**kw))
        self.wide = GSP(WIDE, **gsp_kwargs(**kw))

    def forward(self, nchw, channels_last, tokens, wide):
        outs = []
        for pool, x in ((self.pool, nchw), (self.pool, channels_last), (self.pool, tokens), (self.wide, wide)):
            pooled, details = pool(x, return_details=True)
            outs += [pooled, details["marginals"], details["weights"].flatten(1)]
        return tuple(outs)


def layout_inputs(B=2, C=8, H=3, W=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    nchw = torch.randn(B, C, H, W, generator=gen)
    cl = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    tokens = torch.randn(B, H * W, C, generator=gen)
    wide = torch.randn(B, WIDE, H, W, generator=gen) * 0.1
    return nchw, cl, tokens, wide
