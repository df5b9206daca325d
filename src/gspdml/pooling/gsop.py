"""Global second-order pooling (GSoP, Gao et al. 2019), channel-attention form; weights: uniform."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, masked_mean, real_count, uniform_weights

__all__ = ["GSoP", "masked_covariance"]


def masked_covariance(feats: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Covariance (B, C, C) of (B, n, C) features over the real positions (divided by their count)."""
    m = feats.new_ones(feats.shape[:2]) if mask is None else mask.to(feats.dtype)
    count = real_count(feats, mask).unsqueeze(-1)
    mean = (feats * m.unsqueeze(-1)).sum(dim=1, keepdim=True) / count
    centred = (feats - mean) * m.unsqueeze(-1)
    return centred.transpose(1, 2) @ centred / count


@POOLINGS.register("gsop")
class GSoP(Pooling):
    """GSoP: second-order statistics of the features as channel attention, then average pooling.

    The features are reduced to ``reduced`` channels (1x1 conv + ReLU), their covariance
    ``Sigma`` (reduced x reduced, over the real positions) goes through GSoP's row-wise
    convolution (each row ``Sigma_i`` -> 4 numbers, a grouped conv) and a 1x1 conv to ``dim``
    channels with a sigmoid: the channel weights ``a``. The output is ``mean_j a * f_j``, of
    dimension ``dim``. This projection of the ``reduced^2`` covariance back to ``dim`` channel
    weights is the authors' TF layer's (``layers/pooling/gsop.py``, channel branch); its spatial
    branch needs a fixed number of positions and its batch normalisations are left out, so the
    layer works with any map size and with masks.
    """

    name = "gsop"

    def __init__(self, dim: int, reduced: int = 128) -> None:
        super().__init__(dim)
        if isinstance(reduced, bool) or not isinstance(reduced, int) or reduced < 1:
            raise InputError(f"gsop pooling: reduced must be a positive integer (covariance size), got {reduced!r}")
        self.reduce = nn.Linear(dim, reduced)
        # row-wise convolution: row i of Sigma -> 4 outputs with its own weights (groups = reduced)
        self.row_weight = nn.Parameter(torch.empty(reduced, 4, reduced))
        self.row_bias = nn.Parameter(torch.zeros(reduced, 4))
        nn.init.kaiming_uniform_(self.row_weight.view(reduced * 4, reduced), a=5 ** 0.5)
        self.expand = nn.Linear(4 * reduced, dim)

    def channel_attention(self, feats: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The channel weights ``a`` (B, dim) in (0, 1)."""
        reduced = torch.relu(self.reduce(feats))
        cov = masked_covariance(reduced, mask)
        rows = torch.einsum("bij,ikj->bik", cov, self.row_weight) + self.row_bias
        return torch.sigmoid(self.expand(rows.flatten(1)))

    def pool(self, feats, mask):
        att = self.channel_attention(feats, mask)
        pooled = masked_mean(feats, mask) * att
        return pooled, uniform_weights(feats, mask), None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reduced={self.reduce.out_features}"
