"""Small backbones for the shipped demo data (CPU friendly, no pretrained weights needed).

* ``smallcnn``: a 3-block CNN for single-channel collages (``digits_collage``). Stride 4: a
  48x48 collage of a 3x3 digit grid gives a 12x12 map, i.e. 4x4 map cells per digit cell, so
  pooling-weight maps align with the digit grid.
* ``token_embedding``: a trainable embedding table over token ids (``tokens``): a bag of token
  ids (B, N) becomes a token set (B, N, C), the pooling input of the paper's synthetic study.

Both are registered in :mod:`gspdml.models.backbones` (lazy table name -> this module) and have
the ``out_channels`` and ``input_kind`` attributes of the backbone contract.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gspdml.errors import CheckpointError, InputError


def _load_local_weights(module: nn.Module, pretrained, name: str) -> None:
    """Load a local state-dict file into ``module`` (these backbones have no internet weights)."""
    if pretrained in (None, False, "none", ""):
        return
    if pretrained is True or pretrained in ("imagenet", "default"):
        raise InputError(f"backbone {name!r} has no published pretrained weights; pass pretrained=None "
                         "or the path of a local state-dict file")
    path = Path(pretrained)
    if not path.is_file():
        raise CheckpointError(f"backbone {name!r}: weights file {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"backbone {name!r}: weights file {str(path)!r} does not match the "
                              f"architecture: {exc}") from exc


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
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tokens):
            raise InputError(f"token_embedding: token ids must lie in [0, {self.num_tokens - 1}], "
                             f"got range [{int(ids.min())}, {int(ids.max())}]")
        return self.embedding(ids)


def smallcnn(pretrained=None, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128),
             **kwargs) -> SmallCNN:
    """The demo's small CNN (see :class:`SmallCNN`); ``pretrained`` may be a local state-dict file."""
    if kwargs:
        raise InputError(f"smallcnn: unexpected arguments {sorted(kwargs)}; valid: in_channels, widths")
    model = SmallCNN(in_channels=in_channels, widths=tuple(widths))
    _load_local_weights(model, pretrained, "smallcnn")
    return model


def token_embedding(pretrained=None, num_tokens: int = 68, dim: int = 64, **kwargs) -> TokenEmbedding:
    """Token-embedding backbone (see :class:`TokenEmbedding`); ``pretrained`` may be a local file."""
    if kwargs:
        raise InputError(f"token_embedding: unexpected arguments {sorted(kwargs)}; valid: num_tokens, dim")
    model = TokenEmbedding(num_tokens=num_tokens, dim=dim)
    _load_local_weights(model, pretrained, "token_embedding")
    return model
