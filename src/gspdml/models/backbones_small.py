"""Small backbones for the shipped demo data (CPU friendly, no pretrained weights needed).

* ``smallcnn``: a 3-block CNN for single-channel collages (``digits_collage``). Stride 4: a
  48x48 collage of a 3x3 digit grid gives a 12x12 map, i.e. 4x4 map cells per digit cell, so
  pooling-weight maps align with the digit grid.
* ``token_embedding``: a trainable embedding table over token ids (``tokens``): a bag of token
  ids (B, N) becomes a token set (B, N, C), the pooling input of the paper's synthetic study.

Both are registered in :data:`gspdml.models.backbones.BACKBONES` and have the ``out_channels``
and ``input_kind`` attributes of the backbone contract.
"""
from __future__ import annotations

import torch
from torch import nn

from gspdml.errors import InputError
from gspdml.models._weights import load_weights_file
from gspdml.models.backbones import BACKBONES


class SmallCNN(nn.Module):
    """Three conv blocks (3x3 conv, BatchNorm, ReLU), max-pool after the first two: stride 4.

    Input (B, in_channels, H, W) -> feature map (B, out_channels, H/4, W/4). The receptive field
    of an output cell is 18 pixels, about one upsampled digit (16 pixels).
    """

    input_kind = "image"

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise InputError(f"smallcnn: widths must be three positive integers, got {widths!r}")
        c1, c2, c3 = (int(w) for w in widths)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.in_channels = int(in_channels)
        self.features = nn.Sequential(
            *block(in_channels, c1), nn.MaxPool2d(2),
            *block(c1, c2), nn.MaxPool2d(2),
            *block(c2, c3),
        )
        self.out_channels = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"smallcnn: expected images of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        return self.features(x)


class TokenEmbedding(nn.Module):
    """Trainable token embeddings: ids (B, N) -> token set (B, N, dim)."""

    input_kind = "tokens"

    def __init__(self, num_tokens: int = 68, dim: int = 64) -> None:
        super().__init__()
        if int(num_tokens) < 1 or int(dim) < 1:
            raise InputError(f"token_embedding: num_tokens and dim must be >= 1, got {num_tokens!r}, {dim!r}")
        self.embedding = nn.Embedding(int(num_tokens), int(dim))
        self.num_tokens = int(num_tokens)
        self.out_channels = int(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"token_embedding: expected integer token ids of shape (B, N), got "
                             f"{tuple(ids.shape)} {ids.dtype}")
        # a data-dependent check: eager only (compile/export trace the embedding lookup alone)
        if not torch.compiler.is_compiling() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tokens):
            raise InputError(f"token_embedding: token ids must lie in [0, {self.num_tokens - 1}], "
                             f"got range [{int(ids.min())}, {int(ids.max())}]")
        return self.embedding(ids)


@BACKBONES.register("smallcnn")
def smallcnn(pretrained=None, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128)) -> SmallCNN:
    """The demo's small CNN (see :class:`SmallCNN`); ``pretrained`` may be a local state-dict file."""
    model = SmallCNN(in_channels=in_channels, widths=tuple(widths))
    if pretrained:
        load_weights_file(model, pretrained, "smallcnn")
    return model


@BACKBONES.register("token_embedding")
def token_embedding(pretrained=None, num_tokens: int = 68, dim: int = 64) -> TokenEmbedding:
    """Token-embedding backbone (see :class:`TokenEmbedding`); ``pretrained`` may be a local file."""
    model = TokenEmbedding(num_tokens=num_tokens, dim=dim)
    if pretrained:
        load_weights_file(model, pretrained, "token_embedding")
    return model
