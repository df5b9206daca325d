"""Generalized Sum Pooling (GSP): a learnable, exactly solved optimal-transport pooling layer.

GSP replaces global average pooling (GAP). Each feature ``f_j`` of a map (or token set) keeps the
share of its mass that an entropy-smoothed partial optimal transport sends to learned prototypes
``w_1..w_m``; the output is ``sum_j p_j f_j`` with ``p_j = (1/n - rho_j) / mu``. At ``mu = 1``
every feature is fully transported and GSP is exactly GAP. See
:mod:`gspdml.pooling.transport` for the problem and the solvers.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import InputError
from gspdml.pooling.base import POOLINGS, Pooling, all_finite, masked_mean, uniform_weights
from gspdml.pooling.transport import (
    COST_BOUND,
    check_solver_args,
    cost_points_by_prototypes,
    is_tracing,
    no_autocast,
    prefer_rows,
    solve_points_first,
    solver_dtype,
    weighted_sum,
)

__all__ = ["GSP", "kcenter_greedy", "INITS"]

INITS = ("kcenter", "random")


def kcenter_greedy(points: Tensor, k: int) -> Tensor:
    """Greedy k-center (farthest-first traversal) over ``points`` (N, D); returns k indices.

    Starts at index 0, then repeatedly adds the point whose Euclidean distance to the nearest
    chosen point is largest (ties: the lowest index). This is the 2-approximation of the k-center
    problem that the GSP authors used to initialise the prototypes.
    """
    if points.dim() != 2 or points.shape[0] < k or k < 1:
        raise InputError(
            f"kcenter_greedy needs an (N, D) tensor with N >= k >= 1, got shape "
            f"{tuple(points.shape)} and k={k}"
        )
    pts = points.detach().double()
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    chosen[0] = 0
    nearest = torch.linalg.vector_norm(pts - pts[0], dim=1)
    for i in range(1, k):
        j = torch.argmax(nearest)
        chosen[i] = j
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(pts - pts[j], dim=1))
    return chosen


def _gather_ranks(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated in rank order (no gradient); ``x`` itself without a process group."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    local = x.detach().contiguous()
    if dist.get_backend() == "nccl" and local.device.type != "cuda":
        local = local.cuda()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(x.device)


@POOLINGS.register("gsp")
class GSP(Pooling):
    """Generalized Sum Pooling layer (Gurbuz et al.), solved exactly.

    Args:
        dim: number of feature channels C.
        num_prototypes: number of learnable prototypes m (paper: 64 for CUB/Cars, 128 for SOP/In-shop).
        mu: transported mass ratio in (0, 1] (paper: 0.3); ``mu = 1`` is exactly GAP.
        eps: entropy-smoothing weight > 0, multiplies the cost in ``exp(-eps c)`` (paper: 0.5 with
            proxy losses, 5.0 with pair losses); larger = sharper feature selection.
        solver: ``"exact"`` (closed form + Newton root; default) or ``"fixed_point"`` (the paper's
            Prop. 4.2 iteration for ``iters`` steps with the Prop. 4.3 backward).
        iters: fixed-point iterations (``solver="fixed_point"`` only; paper: 100).
        init: ``"kcenter"`` (the authors' scheme: output GAP while a memory of ``memory_size``
            L2-normalised GAP vectors fills during training, then set the prototypes once by greedy
            k-center over it) or ``"random"`` (random unit vectors, GSP from the first step).
        memory_size: size of the k-center memory (paper: 1024); must be >= ``num_prototypes``.
        warmup_steps: the TF layer's ``warm_up_steps``: for the first ``warmup_steps`` training-mode
            forward calls the output is (masked) GAP and the k-center memory is not filled; the
            calls are counted in the buffer ``warmup_count`` (resume is exact; it exists once a warm-up
            is set, so the state dict of a GSP without warm-up keeps its keys). Until the count
            reaches ``warmup_steps`` the output is GAP in eval mode too. Afterwards as without
            warm-up (memory fills, then k-center; ``init="random"``: GSP). The trainer sets it from
            ``train.pooling_warmup_epochs``; it may be changed on an instance.

    Input ``x``: a feature map (B, C, H, W) or a token set (B, N, C), plus an optional bool ``mask``
    ((B, N), or (B, H, W) / (B, H*W) for maps; True = real feature) for padded sets.
    Output: (B, C), or ``(pooled, details)`` with ``return_details=True``, where ``details`` has
    ``"weights"`` (B, H, W) or (B, N) (sum to 1, 0 at padding), ``"marginals"`` z (B, m) (prototype
    marginals for the zero-shot loss, sum to 1) and ``"rho"`` (residual mass, shaped like weights).

    Costs are ``|| w_i / max(1, |w_i|) - f_j / max(1, |f_j|) ||_2``; the output pools the
    unnormalised features. ``GSP.prototypes`` is a single ``nn.Parameter`` (m, C) that is only ever
    updated in place, so an optimizer built before the first forward keeps training it after the
    k-center initialisation. The initialisation state (memory, fill count, flag) are buffers and
    survive ``state_dict()`` round trips. While k-center initialisation is pending the output is
    GAP and ``details["weights"]`` is uniform, but ``details["marginals"]`` and ``"rho"`` come from
    the transport problem with the current prototypes (so a zero-shot loss still gets a z).

    Works under ``torch.compile`` (also ``fullgraph=True`` once the prototypes are initialised),
    ``torch.export`` and ONNX export. NaN/inf features or prototypes raise :class:`InputError`
    in eager mode (host reads, skipped when traced); ``check_finite = False`` on an instance
    turns them off, and then the layer never synchronises with the host.

    Example:
        >>> pool = GSP(dim=128, num_prototypes=64, mu=0.3, eps=5.0, init="random")
        >>> pooled, details = pool(torch.randn(8, 128, 7, 7), return_details=True)
        >>> pooled.shape, details["weights"].shape, details["marginals"].shape
        (torch.Size([8, 128]), torch.Size([8, 7, 7]), torch.Size([8, 64]))
    """

    check_finite = True
    projects_first = True
    prototypes: nn.Parameter
    memory: Tensor
    memory_count: Tensor
    initialized: Tensor
    warmup_count: Tensor

    def __init__(
        self,
        dim: int,
        num_prototypes: int = 64,
        mu: float = 0.3,
        eps: float = 5.0,
        solver: str = "exact",
        iters: int = 100,
        init: str = "kcenter",
        memory_size: int = 1024,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(dim)
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int) or num_prototypes < 1:
            raise InputError(f"GSP: num_prototypes must be an integer >= 1, got {num_prototypes!r}")
        try:
            check_solver_args(mu, eps, solver, iters)
        except InputError as exc:
            raise InputError(f"GSP: {exc}") from None
        if init not in INITS:
            raise InputError(f"GSP: init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
        if init == "kcenter" and (isinstance(memory_size, bool) or not isinstance(memory_size, int)
                                  or memory_size < num_prototypes):
            raise InputError(
                f"GSP: memory_size must be an integer >= num_prototypes ({num_prototypes}) for "
                f"k-center initialisation, got {memory_size!r}"
            )
        self.num_prototypes = num_prototypes
        self._warmup_steps, self._warming = 0, False
        self.mu = float(mu)
        self.eps = float(eps)
        self.solver = solver
        self.iters = int(iters)
        self.init = init
        self.memory_size = int(memory_size) if init == "kcenter" else 0
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=1))
        self.register_buffer("memory", torch.zeros(self.memory_size, dim))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.warmup_steps = warmup_steps  # after the prototypes: the counter is created on their device
        # a Python mirror of the buffer, so that forward branches on no tensor value (compile,
        # export); kept in step by initialize_prototypes and load_state_dict
        self._ready = init == "random"
        self.register_load_state_dict_post_hook(GSP._sync_ready)

    @staticmethod
    def _sync_ready(module: "GSP", incompatible_keys) -> None:
        module._ready = bool(module.initialized)
        module._warming = module._warmup_done() < module._warmup_steps

    def _warmup_done(self) -> int:
        return int(self.warmup_count) if "warmup_count" in self._buffers else 0

    def _add_warmup_counter(self) -> None:
        if "warmup_count" not in self._buffers:
            self.register_buffer("warmup_count", torch.zeros((), dtype=torch.long, device=self.prototypes.device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the counter exists once a warm-up was set (state dicts of GSPs without one stay as before):
        # a state dict with a counter brings it along; one without it counted no warm-up step
        if prefix + "warmup_count" in state_dict:
            self._add_warmup_counter()
        elif "warmup_count" in self._buffers:
            state_dict[prefix + "warmup_count"] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def warmup_steps(self) -> int:
        """Training-mode forward calls with GAP output and no memory filling (see the class docstring)."""
        return self._warmup_steps

    @warmup_steps.setter
    def warmup_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InputError(f"GSP: warmup_steps must be an integer >= 0, got {steps!r}")
        if steps > 0:
            self._add_warmup_counter()
        self._warmup_steps = steps
        # Python mirror of "warmup_count < warmup_steps", so that forward branches on no tensor value
        self._warming = self._warmup_done() < steps

    @property
    def is_warming_up(self) -> bool:
        """Whether the warm-up (GAP output, no memory filling) is still running."""
        return self._warming

    @property
    def outputs_gap(self) -> bool:
        """Whether the output is GAP for a reason other than ``mu = 1``: warm-up or pending k-center."""
        return self._warming or not self._ready

    # ------------------------------------------------------------------------------------------

    def extra_repr(self) -> str:
        text = (f"dim={self.dim}, num_prototypes={self.num_prototypes}, mu={self.mu}, "
                f"eps={self.eps}, solver={self.solver!r}")
        if self.solver == "fixed_point":
            text += f", iters={self.iters}"
        text += f", init={self.init!r}"
        if self.warmup_steps:
            text += f", warmup_steps={self.warmup_steps} ({int(self.warmup_count)} done)"
        if self.init == "kcenter":
            state = "done" if bool(self.initialized) else f"pending {int(self.memory_count)}/{self.memory_size}"
            text += f", memory_size={self.memory_size} ({state})"
        return text

    @property
    def is_initialized(self) -> bool:
        """Whether the prototypes are set (always True for ``init="random"``)."""
        return self._ready

    @torch.no_grad()
    def initialize_prototypes(self, vectors: Tensor) -> None:
        """Set the prototypes by greedy k-center over ``vectors`` (N, C), N >= num_prototypes.

        Called automatically once the memory is full; may be called by hand (e.g. with class
        means). The Parameter is updated in place. Under ``torch.distributed`` the result of
        rank 0 is broadcast so every replica starts from the same prototypes.
        """
        if vectors.dim() != 2 or vectors.shape[1] != self.dim or vectors.shape[0] < self.num_prototypes:
            raise InputError(
                f"GSP.initialize_prototypes needs (N, {self.dim}) vectors with N >= "
                f"{self.num_prototypes}, got shape {tuple(vectors.shape)}"
            )
        idx = kcenter_greedy(vectors, self.num_prototypes)
        self.prototypes.copy_(vectors[idx].to(self.prototypes.dtype))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.prototypes.data, src=0)
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def _remember(self, gap: Tensor) -> None:
        """A training step with GAP output: during the warm-up count it (the memory is not filled);
        otherwise add this step's GAP vectors to the k-center memory; under torch.distributed the
        vectors of every rank (in rank order: the global batch), so every rank keeps the memory one
        process on the global batch would keep."""
        if self._warming:
            self.warmup_count.add_(1)
            self._warming = int(self.warmup_count) < self._warmup_steps
            return
        gap = _gather_ranks(gap)
        count = int(self.memory_count)
        take = min(gap.shape[0], self.memory_size - count)
        if take > 0:
            self.memory[count:count + take] = F.normalize(gap[:take].to(self.memory.dtype), dim=1)
            self.memory_count.fill_(count + take)
        if int(self.memory_count) >= self.memory_size:
            self.initialize_prototypes(self.memory)

    # ------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, return_details: bool = False
                ) -> Union[Tensor, tuple[Tensor, dict]]:
        """Pool ``x`` (B, C, H, W) or (B, N, C) into (B, C); see the class docstring."""
        feats, mask, spatial = self.flatten(x, mask)
        pooled, solution = self._transport_pool(feats, mask, return_details)
        if not return_details:
            return pooled
        weights, marginals, rho = solution
        shape = self.spatial_shape(feats, spatial)
        return pooled, {"weights": weights.reshape(shape), "marginals": marginals, "rho": rho.reshape(shape)}

    def pool(self, feats: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The :class:`Pooling` contract on validated (B, n, C) features: (pooled, weights, marginals)."""
        pooled, (weights, marginals, _) = self._transport_pool(feats, mask, True)
        return pooled, weights, marginals

    def _transport_pool(self, feats: Tensor, mask: Optional[Tensor], with_solution: bool):
        """``(pooled (B, C), (weights (B, n), marginals (B, m), rho (B, n)) or None)``.

        Masked GAP during the warm-up, while the k-center initialisation is pending or at
        ``mu = 1`` (the transport problem is then still solved for the details, unless they are not
        asked for).
        """
        out_dtype = feats.dtype
        dtype = solver_dtype(torch.promote_types(out_dtype, self.prototypes.dtype))
        pending = self.outputs_gap  # warm-up or k-center pending: this step counts / fills the memory
        if self.check_finite and not is_tracing() and not all_finite(self.prototypes):
            raise InputError(
                f"{self.where} prototypes contain NaN or infinite values (e.g. after a diverged "
                f"optimisation step); they must be finite"
            )
        gap_out = pending or self.mu >= 1.0
        with no_autocast(feats.device.type):
            feats = feats.to(dtype)
            if gap_out:
                pooled = masked_mean(feats, mask)
                if pending and self.training:
                    self._remember(pooled.detach())
                if not with_solution:
                    return pooled.to(out_dtype), None
            feats = prefer_rows(feats)  # token rows and NCHW maps as they are (the cost picks its GEMMs)
            cost_nm = cost_points_by_prototypes(feats, self.prototypes.to(dtype))
            weights, rho, marginals, _ = solve_points_first(
                cost_nm, self.mu, self.eps, solver=self.solver, iters=self.iters, mask=mask,
                with_plan=False, cost_bound=COST_BOUND,
            )
            if gap_out:
                weights = uniform_weights(feats, mask)
            else:
                pooled = weighted_sum(feats, weights)
        return pooled.to(out_dtype), ((weights, marginals, rho) if with_solution else None)
