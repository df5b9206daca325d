"""Non-isotropy regularisation (NIR, Roth et al. 2022) for proxy-based DML losses.

NIR asks that every sample ``x`` be *uniquely translatable* from its class proxy ``rho``: a
conditional normalizing flow maps ``x`` to a latent ``z = f(x | rho)`` that should follow a standard
normal, i.e. samples are spread non-isotropically around their proxy in a learnable way. With
``log|det J|`` the flow's log-Jacobian determinant, the per-sample negative log-likelihood is
``0.5 ||z||^2 - log|det J|`` (constants dropped). The authors' code minimises
``mean_i exp(0.5 ||z_i||^2 - log|det J_i|)`` (``objective="exp"``, default); the paper writes the plain
NLL mean (``objective="nll"``). Nothing is detached: gradients reach the embeddings (backbone),
the proxies (through the condition) and the flow.

Flow (as the authors' FrEIA graph): ``num_blocks`` (5) blocks of [fixed random permutation ->
GLOW affine coupling with two half-couplings]. Each half-coupling transforms one half of the
vector with ``y = exp(s) * x + t`` where ``(s_raw, t) = subnet([other half, proxy])`` and the log
scale is soft-clamped to ``s = clamp * 0.636 * atan(s_raw)`` (``clamp = 2``: ``|s| < 2``). Each
subnet is an MLP with ``num_hidden_layers`` (7) hidden layers of width ``hidden`` (128) and ReLU;
the (L2-normalised) proxy is concatenated to every subnet input.

Used through :func:`gspdml.losses.build_loss` as ``PAnchor+NIR`` / ``PNCA+NIR``
(:func:`gspdml.losses.builtin.with_nir`): ``L = L_NIR + w * L_proxy`` with ``w`` per dataset from
:data:`gspdml.losses.presets.NIR_WEIGHTS`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import ConfigError, InputError

__all__ = ["NIRLoss", "ConditionalFlow", "GlowCoupling", "mlp_subnet"]

ATAN_SCALE = 0.636  # FrEIA's constant: 0.636 * atan(.) is bounded by ~1 (0.636 * pi / 2 = 0.999)


def mlp_subnet(dim_in: int, dim_out: int, hidden: int = 128, num_hidden_layers: int = 7) -> nn.Sequential:
    """MLP ``dim_in -> hidden (x num_hidden_layers, ReLU) -> dim_out``."""
    if num_hidden_layers < 1:
        raise ConfigError(f"NIR subnet needs at least one hidden layer, got num_hidden_layers={num_hidden_layers}")
    layers: list[nn.Module] = [nn.Linear(dim_in, hidden), nn.ReLU()]
    for _ in range(num_hidden_layers - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, dim_out))
    return nn.Sequential(*layers)


class GlowCoupling(nn.Module):
    """Conditional GLOW affine coupling with two half-couplings and soft-clamped log-scales."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 128, num_hidden_layers: int = 7, clamp: float = 2.0) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a coupling flow needs dim >= 2, got {dim}")
        self.len1 = dim // 2
        self.len2 = dim - self.len1
        self.clamp = float(clamp)
        # subnet2 reads half 2 (+ condition) and transforms half 1; subnet1 the other way round.
        self.subnet2 = mlp_subnet(self.len2 + cond_dim, 2 * self.len1, hidden, num_hidden_layers)
        self.subnet1 = mlp_subnet(self.len1 + cond_dim, 2 * self.len2, hidden, num_hidden_layers)

    def _log_scale(self, s: Tensor) -> Tensor:
        return self.clamp * ATAN_SCALE * torch.atan(s)

    def _params(self, subnet: nn.Module, u: Tensor, cond: Tensor, n: int) -> tuple[Tensor, Tensor]:
        r = subnet(torch.cat([u, cond], dim=1))
        return self._log_scale(r[:, :n]), r[:, n:]

    def forward(self, x: Tensor, cond: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
        """Returns ``(y, log|det J|)`` (per sample); ``reverse=True`` inverts (log-det negated)."""
        x1, x2 = x[:, : self.len1], x[:, self.len1:]
        if not reverse:
            s2, t2 = self._params(self.subnet2, x2, cond, self.len1)
            y1 = torch.exp(s2) * x1 + t2
            s1, t1 = self._params(self.subnet1, y1, cond, self.len2)
            y2 = torch.exp(s1) * x2 + t1
            return torch.cat([y1, y2], dim=1), s2.sum(dim=1) + s1.sum(dim=1)
        s1, t1 = self._params(self.subnet1, x1, cond, self.len2)
        y2 = (x2 - t1) * torch.exp(-s1)
        s2, t2 = self._params(self.subnet2, y2, cond, self.len1)
        y1 = (x1 - t2) * torch.exp(-s2)
        return torch.cat([y1, y2], dim=1), -(s2.sum(dim=1) + s1.sum(dim=1))


class ConditionalFlow(nn.Module):
    """``num_blocks`` x [fixed random permutation -> :class:`GlowCoupling`], conditioned on ``cond``."""

    def __init__(
        self,
        dim: int,
        cond_dim: Optional[int] = None,
        num_blocks: int = 5,
        hidden: int = 128,
        num_hidden_layers: int = 7,
        clamp: float = 2.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ConfigError(f"NIR flow needs at least one block, got num_blocks={num_blocks}")
        cond_dim = dim if cond_dim is None else cond_dim
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)
        perms = torch.stack([torch.randperm(dim, generator=gen) for _ in range(num_blocks)])
        # fixed permutations live in buffers so checkpoints carry them
        self.register_buffer("permutations", perms)
        self.register_buffer("inverse_permutations", torch.argsort(perms, dim=1))
        self.blocks = nn.ModuleList(
            GlowCoupling(dim, cond_dim, hidden, num_hidden_layers, clamp) for _ in range(num_blocks)
        )

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``z, log|det J|`` of the map ``x -> z`` (permutations have log-det 0)."""
        logdet = x.new_zeros(x.shape[0])
        for k, block in enumerate(self.blocks):
            x, ld = block(x[:, self.permutations[k]], cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``x, log|det J^{-1}|`` of the inverse map."""
        logdet = z.new_zeros(z.shape[0])
        for k in reversed(range(len(self.blocks))):
            z, ld = self.blocks[k](z, cond, reverse=True)
            z = z[:, self.inverse_permutations[k]]
            logdet = logdet + ld
        return z, logdet


class NIRLoss(nn.Module):
    """NIR regulariser ``L_NIR`` on embeddings and their class proxies.

    Args:
        embedding_dim: embedding size D (the flow acts on R^D, conditioned on a D-dim proxy).
        num_blocks, hidden, num_hidden_layers, clamp: flow architecture (defaults: the authors').
        objective: ``"exp"`` (authors' code, ``mean exp(0.5||z||^2 - logdet)``) or ``"nll"``
            (``mean(0.5||z||^2 - logdet)``, the paper's formula).
        normalize: L2-normalise embeddings and proxies before the flow (authors: yes).
        seed: seed of the fixed random permutations.

    ``forward(embeddings (B, D), proxies (B, D) or (C, D), labels=None)``: if ``labels`` is given,
    ``proxies`` is the full proxy table and row ``labels[i]`` conditions sample ``i``; otherwise
    ``proxies`` already holds one proxy per sample.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_blocks: int = 5,
        hidden: int = 128,
        num_hidden_layers: int = 7,
        clamp: float = 2.0,
        objective: str = "exp",
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if objective not in ("exp", "nll"):
            raise ConfigError(f"NIRLoss: objective must be 'exp' or 'nll', got {objective!r}")
        self.embedding_dim = embedding_dim
        self.objective = objective
        self.normalize = normalize
        self.flow = ConditionalFlow(embedding_dim, embedding_dim, num_blocks, hidden, num_hidden_layers, clamp, seed)

    def latent(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``z, log|det J|`` for each sample given its proxy."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise InputError(
                f"NIRLoss: embeddings must be (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        if labels is not None:
            if labels.shape != (embeddings.shape[0],):
                raise InputError(f"NIRLoss: labels must be (B,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
            if int(labels.min()) < 0 or int(labels.max()) >= proxies.shape[0]:
                raise InputError(
                    f"NIRLoss: labels must lie in [0, {proxies.shape[0] - 1}] (number of proxies), "
                    f"got range [{int(labels.min())}, {int(labels.max())}]"
                )
            proxies = proxies[labels]
        if proxies.shape != embeddings.shape:
            raise InputError(f"NIRLoss: proxies {tuple(proxies.shape)} do not match embeddings {tuple(embeddings.shape)}")
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
            proxies = F.normalize(proxies, dim=1)
        return self.flow(embeddings, proxies.to(embeddings.dtype))

    def forward(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        z, logdet = self.latent(embeddings, proxies, labels)
        nll = 0.5 * z.pow(2).sum(dim=1) - logdet
        if self.objective == "exp":
            return torch.exp(nll).mean()
        return nll.mean()

    def log_likelihood(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Per-sample log-density ``log N(z; 0, I) + log|det J|`` (with the Gaussian constant)."""
        z, logdet = self.latent(embeddings, proxies, labels)
        return -0.5 * z.pow(2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + logdet
