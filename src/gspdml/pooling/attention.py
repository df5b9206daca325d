"""Learned-attention pooling; weights: the softmax attention."""
from __future__ import annotations

import torch
from torch import nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling

__all__ = ["AttentionPooling"]


@POOLINGS.register("attention")
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
