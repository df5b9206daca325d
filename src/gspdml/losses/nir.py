"""Non-isotropy regularisation (NIR, Roth, Vinyals & Akata, CVPR 2022) for proxy-based DML losses.

NIR asks that every sample ``x`` be *uniquely translatable* from its class proxy ``rho``: a
conditional normalizing flow maps ``x`` to a latent ``z = f(x | rho)`` that should follow a standard
normal, so the samples of a class spread around their proxy in a learnable, non-isotropic way.
With ``log|det J|`` the flow's log-Jacobian determinant, the per-sample negative log-likelihood is
``nll = 0.5 ||z||^2 - log|det J|`` (constants dropped). The authors' code minimises
``mean_i exp(nll_i)`` (``objective="exp"``, the default); the paper writes the plain mean NLL
(``objective="nll"``). Nothing is detached: gradients reach the embeddings (backbone), the proxies
(through the condition) and the flow.

The flow is built with FrEIA (``FrEIA.framework.GraphINN``), node for node as in the authors'
``criteria/nir.py``: an input node, then ``num_blocks`` (5) times
``PermuteRandom(seed=k)`` -> ``GLOWCouplingBlock(clamp=2, subnet_constructor=mlp_subnet)``, an output
node, and the condition nodes. A GLOW coupling splits the vector in two halves and transforms each
with ``y = exp(s) * x + t``, ``(s_raw, t) = subnet([other half, condition])``, the log-scale
soft-clamped to ``s = clamp * 0.636 * atan(s_raw)``. Every subnet is the authors' MLP: 8 linear
layers (``num_hidden_layers`` = 7 hidden layers of width ``hidden`` = 128, ReLU in between).

The condition is the L2-normalised proxy of the sample's class, prepared by :class:`ConditionPrep`
(the authors' ``NormflowCondPrep``) according to ``cond_mode``:

=============================  ===============================================================
``dense`` (default)            the proxy conditions every coupling block
``dense_embed``                one MLP (Linear-ReLU-Linear, D -> D) embeds the proxy; the embedding
                               conditions every block
``dense_embed_multi``          one such MLP per block, each applied to the proxy
``dense_embed_multi_stacked``  one MLP per block, chained: block k gets the k-th composition
``start`` / ``mid`` / ``end``  the proxy conditions only the first / middle / last block
=============================  ===============================================================

``noise`` > 0 adds ``noise * U[0, 1)`` to every (normalised) embedding before the flow in training
mode and re-normalises, as the authors' ``--loss_nir_noise`` (default 0: off).

FrEIA's ``PermuteRandom`` seeds numpy's global RNG (``np.random.seed(k)``); the global numpy state
is restored after the flow is built, so building a loss never changes other numpy draws. Its fixed
permutations are kept as buffers (FrEIA stores them as frozen parameters), so ``parameters()`` holds
exactly the trainable weights; the state-dict keys are FrEIA's.

Used through :func:`gspdml.losses.build_loss` as ``PAnchor+NIR`` / ``PNCA+NIR``
(:func:`gspdml.losses.builtin.with_nir`): ``L = L_NIR + w * L_proxy`` with ``w`` per dataset from
:data:`gspdml.losses.presets.NIR_WEIGHTS`.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import ConfigError, InputError

__all__ = ["NIRLoss", "ConditionalFlow", "ConditionPrep", "mlp_subnet", "COND_MODES", "SUBNET_INITS", "OBJECTIVES"]

#: The condition preparation modes of the authors' ``NormflowCondPrep`` / ``NormFlow``.
COND_MODES = ("dense", "dense_embed", "dense_embed_multi", "dense_embed_multi_stacked", "start", "mid", "end")
#: Subnet initialisations: PyTorch's default, or Xavier-uniform weights and zero biases on every
#: linear layer but the first (the authors' ``--loss_nir_nf_fc_init xavier``).
SUBNET_INITS = ("none", "xavier")
#: ``exp``: ``mean exp(nll)`` (the authors' code); ``nll``: ``mean nll`` (the paper's formula).
OBJECTIVES = ("exp", "nll")


def _check_subnet(num_hidden_layers: int, init: str) -> None:
    if num_hidden_layers < 1:
        raise ConfigError(f"NIR subnet needs at least one hidden layer, got num_hidden_layers={num_hidden_layers}")
    if init not in SUBNET_INITS:
        raise ConfigError(f"NIR subnet: init must be one of {', '.join(SUBNET_INITS)}, got {init!r}")


def mlp_subnet(dim_in: int, dim_out: int, hidden: int = 128, num_hidden_layers: int = 7, init: str = "none") -> nn.Sequential:
    """The authors' coupling subnet: ``dim_in -> hidden (x num_hidden_layers, ReLU) -> dim_out``.

    ``num_hidden_layers + 1`` linear layers (the authors' ``fc_depth``, default 8). With
    ``init="xavier"`` every linear layer after the first gets Xavier-uniform weights and zero
    biases, as the authors' ``fc_init='xavier'``.
    """
    _check_subnet(num_hidden_layers, init)
    linears = [nn.Linear(dim_in, hidden)]
    linears += [nn.Linear(hidden, hidden) for _ in range(num_hidden_layers - 1)]
    linears.append(nn.Linear(hidden, dim_out))
    if init == "xavier":
        for lin in linears[1:]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
    layers: list[nn.Module] = [linears[0]]
    for lin in linears[1:]:
        layers += [nn.ReLU(), lin]
    return nn.Sequential(*layers)


def _embedder(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def _num_conditions(cond_mode: str, num_blocks: int) -> int:
    return num_blocks if cond_mode.startswith("dense") else 1


class ConditionPrep(nn.Module):
    """The per-block conditions from the (normalised) proxies: a list of ``(B, cond_dim)`` tensors
    in the order of the flow's condition nodes (see the module docstring for the modes)."""

    def __init__(self, cond_dim: int, num_blocks: int = 5, cond_mode: str = "dense") -> None:
        super().__init__()
        if cond_mode not in COND_MODES:
            raise ConfigError(f"NIR: cond_mode must be one of {', '.join(COND_MODES)}, got {cond_mode!r}")
        self.cond_mode = cond_mode
        self.num_blocks = num_blocks
        if cond_mode == "dense_embed":
            self.embedder = _embedder(cond_dim)
        elif cond_mode in ("dense_embed_multi", "dense_embed_multi_stacked"):
            self.embedder = nn.ModuleList(_embedder(cond_dim) for _ in range(num_blocks))

    def forward(self, proxies: Tensor) -> list[Tensor]:
        mode = self.cond_mode
        if mode == "dense":
            return [proxies] * self.num_blocks
        if mode == "dense_embed":
            return [self.embedder(proxies)] * self.num_blocks
        if mode == "dense_embed_multi":
            return [embed(proxies) for embed in self.embedder]
        if mode == "dense_embed_multi_stacked":
            out, c = [], proxies
            for embed in self.embedder:
                c = embed(c)
                out.append(c)
            return out
        return [proxies]  # start / mid / end: one condition node


def _freia_graph(dim: int, cond_dim: int, num_blocks: int, hidden: int, num_hidden_layers: int, clamp: float,
                 seed: int, cond_mode: str, init: str):
    """The authors' FrEIA GraphINN (node names as theirs); numpy's global RNG state is kept."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    conds: list = [None] * num_blocks
    if cond_mode.startswith("dense"):
        conds = [Ff.ConditionNode(cond_dim, name=f"condition_{k}") for k in range(num_blocks)]
    else:
        where = {"start": 0, "mid": num_blocks // 2, "end": num_blocks - 1}[cond_mode]
        conds[where] = Ff.ConditionNode(cond_dim, name="condition")
    subnet = functools.partial(mlp_subnet, hidden=hidden, num_hidden_layers=num_hidden_layers, init=init)
    numpy_state = np.random.get_state()
    try:
        nodes = [Ff.InputNode(dim, name="Input")]
        for k in range(num_blocks):
            nodes.append(Ff.Node(nodes[-1], Fm.PermuteRandom, {"seed": seed + k}, name=f"permute_{k}"))
            nodes.append(Ff.Node(nodes[-1], Fm.GLOWCouplingBlock, {"clamp": clamp, "subnet_constructor": subnet},
                                 name=f"fc_{k}", conditions=conds[k]))
        nodes.append(Ff.OutputNode(nodes[-1], name="output"))
        nodes += [c for c in conds if c is not None]
        graph = Ff.GraphINN(nodes)
    finally:
        np.random.set_state(numpy_state)
    for module in graph.module_list:
        if isinstance(module, Fm.PermuteRandom):  # frozen LongTensor parameters -> buffers
            for name in ("perm", "perm_inv"):
                value = getattr(module, name).data
                del module._parameters[name]
                module.register_buffer(name, value)
    return graph


class ConditionalFlow(nn.Module):
    """The NIR flow: :class:`ConditionPrep` + the authors' FrEIA ``GraphINN`` (see the module docstring).

    Args:
        dim: size D of the vectors the flow maps (>= 2).
        cond_dim: size of the condition (default D: the proxy).
        num_blocks: permutation + GLOW coupling blocks (authors: 5).
        hidden, num_hidden_layers: subnet width (128) and hidden layers (7, i.e. 8 linear layers).
        clamp: soft clamp of the coupling log-scales, ``|s| < clamp`` (2).
        seed: block ``k`` uses ``PermuteRandom(seed=seed + k)`` (authors: ``seed=k``, i.e. 0).
        cond_mode: condition preparation (:data:`COND_MODES`, authors: ``dense``).
        init: subnet initialisation (:data:`SUBNET_INITS`, authors: ``none``).

    ``forward(x, cond) -> (z, log|det J|)``; ``inverse(z, cond) -> (x, log|det J^-1|)``; ``cond`` is
    one (B, cond_dim) tensor per sample (the proxy), prepared into the per-block conditions.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: Optional[int] = None,
        num_blocks: int = 5,
        hidden: int = 128,
        num_hidden_layers: int = 7,
        clamp: float = 2.0,
        seed: int = 0,
        cond_mode: str = "dense",
        init: str = "none",
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a coupling flow needs dim >= 2, got {dim}")
        if num_blocks < 1:
            raise ConfigError(f"NIR flow needs at least one block, got num_blocks={num_blocks}")
        if not clamp > 0:
            raise ConfigError(f"NIR flow: clamp must be > 0, got {clamp}")
        cond_dim = dim if cond_dim is None else cond_dim
        self.dim, self.cond_dim = dim, cond_dim
        self.cond_prep = ConditionPrep(cond_dim, num_blocks, cond_mode)
        _check_subnet(num_hidden_layers, init)  # before FrEIA builds anything (and draws no random numbers)
        self.graph = _freia_graph(dim, cond_dim, num_blocks, hidden, num_hidden_layers, float(clamp), seed,
                                  cond_mode, init)

    @property
    def blocks(self) -> list[nn.Module]:
        """The FrEIA ``GLOWCouplingBlock`` modules, in flow order."""
        import FrEIA.modules as Fm

        return [m for m in self.graph.module_list if isinstance(m, Fm.GLOWCouplingBlock)]

    @property
    def permutations(self) -> Tensor:
        """(num_blocks, D): the fixed permutation applied before each coupling block."""
        import FrEIA.modules as Fm

        return torch.stack([m.perm for m in self.graph.module_list if isinstance(m, Fm.PermuteRandom)])

    def _check(self, x: Tensor, cond: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise InputError(f"NIR flow: input must be (B, {self.dim}), got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], self.cond_dim):
            raise InputError(f"NIR flow: condition must be (B, {self.cond_dim}) = ({x.shape[0]}, {self.cond_dim}), "
                             f"got {tuple(cond.shape)}")

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``z, log|det J|`` (per sample) of the map ``x -> z``."""
        self._check(x, cond)
        z, logdet = self.graph(x, c=self.cond_prep(cond), rev=False, jac=True)
        return z, logdet.to(z.dtype)  # FrEIA adds its constant log-dets in the default dtype

    def inverse(self, z: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``x, log|det J^{-1}|`` (per sample) of the inverse map ``z -> x``."""
        self._check(z, cond)
        x, logdet = self.graph(z, c=self.cond_prep(cond), rev=True, jac=True)
        return x, logdet.to(x.dtype)


class NIRLoss(nn.Module):
    """NIR regulariser ``L_NIR`` on embeddings and their class proxies.

    Args:
        embedding_dim: embedding size D (the flow acts on R^D, conditioned on a D-dim proxy).
        num_blocks, hidden, num_hidden_layers, clamp: flow architecture (defaults: the authors'
            ``parameters.py``: 5 blocks, width 128, fc_depth 8, clamp 2).
        objective: ``"exp"`` (authors' code, ``mean exp(0.5||z||^2 - logdet)``) or ``"nll"``
            (``mean(0.5||z||^2 - logdet)``, the paper's formula).
        normalize: L2-normalise embeddings and proxies before the flow (authors: yes; the
            embeddings arrive normalised from their model, the proxies are normalised in the loss).
        seed: block ``k`` permutes with ``PermuteRandom(seed=seed + k)`` (authors: 0).
        cond_mode: condition preparation, one of :data:`COND_MODES` (authors: ``dense``).
        noise: in training mode, add ``noise * U[0, 1)`` to the normalised embeddings and
            re-normalise (authors' ``--loss_nir_noise``, default 0).
        subnet_init: :data:`SUBNET_INITS` (authors: ``none``).

    ``forward(embeddings (B, D), proxies (B, D) or (C, D), labels=None)``: if ``labels`` is given,
    ``proxies`` is the full proxy table and row ``labels[i]`` conditions sample ``i``; otherwise
    ``proxies`` already holds one proxy per sample. The flow runs in float32 (or the inputs'
    float64) with autocast off: ``exp`` of a half-precision NLL overflows at 11.
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
        cond_mode: str = "dense",
        noise: float = 0.0,
        subnet_init: str = "none",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"NIRLoss: objective must be 'exp' or 'nll', got {objective!r}")
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ConfigError(f"NIRLoss: noise must be a finite float >= 0, got {noise!r}")
        self.embedding_dim = embedding_dim
        self.objective = objective
        self.normalize = normalize
        self.noise = float(noise)
        self.flow = ConditionalFlow(embedding_dim, embedding_dim, num_blocks, hidden, num_hidden_layers, clamp, seed,
                                    cond_mode, subnet_init)

    def latent(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``z, log|det J|`` for each sample given its proxy (the noise is applied in training mode)."""
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
        dtype = embeddings.dtype if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(embeddings.device.type, enabled=False):
            embeddings, proxies = embeddings.to(dtype), proxies.to(dtype)
            if self.normalize:
                embeddings = F.normalize(embeddings, dim=1)
                proxies = F.normalize(proxies, dim=1)
            if self.noise and self.training:
                embeddings = F.normalize(embeddings + self.noise * torch.rand_like(embeddings), dim=1)
            return self.flow(embeddings, proxies)

    def per_sample_nll(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """``0.5 ||z_i||^2 - log|det J_i|`` per sample (the exponent of the ``exp`` objective)."""
        z, logdet = self.latent(embeddings, proxies, labels)
        return 0.5 * z.pow(2).sum(dim=1) - logdet

    def forward(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        nll = self.per_sample_nll(embeddings, proxies, labels)
        if self.objective == "exp":
            return torch.exp(nll).mean()
        return nll.mean()

    def log_likelihood(self, embeddings: Tensor, proxies: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Per-sample log-density ``log N(z; 0, I) + log|det J|`` (with the Gaussian constant)."""
        z, logdet = self.latent(embeddings, proxies, labels)
        return -0.5 * z.pow(2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + logdet
