"""Multi-process training with ``torchrun`` + DistributedDataParallel.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` reads them and starts the process group (``nccl`` on CUDA, ``gloo`` on CPU).
Without these variables everything runs as a single process (world size 1) and nothing here
costs anything. Every rank computes the same global class-balanced P x K batch per step and
takes its contiguous share of the classes (see :class:`gspdml.data.ClassBalancedBatchSampler`);
the training module all-gathers the per-rank embeddings (with gradients, :func:`gather_with_grad`),
marginals and labels so that every loss sees the global batch; only rank 0 logs and writes files;
evaluation embeds a strided shard of the dataset on every rank and all-gathers the embeddings in
dataset order.

Gradient scale of the gathered losses: every rank computes the same loss ``L`` of the global batch.
The backward of :func:`gather_with_grad` sums the gradients of the W identical copies of ``L``
over ranks, so rank r's local embeddings get ``W * dL/de_r`` and its model-parameter gradient is
``W * (the part of dL/dtheta that flows through rank r's samples)``; DDP's averaging over ranks
gives ``(1/W) * sum_r W * dL/dtheta|_r = dL/dtheta``, the one-process gradient on the global batch.
Parameters of the losses (proxies, the NIR flow, the L_ZS class table) get ``dL/dphi`` on every
rank (identical), and DDP's average leaves it unchanged. Hence no rescaling of the loss is needed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gspdml.config import parse_device
from gspdml.errors import ConfigError

__all__ = ["DistContext", "resolve_device", "init_from_env", "cleanup", "all_gather_ordered", "gather_with_grad",
           "gather_labels"]


@dataclass
class DistContext:
    """Where this process stands: ``rank``, ``world_size``, ``local_rank``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
        if not self.enabled:
            return module
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None, find_unused_parameters=True
        )

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The device for ``spec``: ``cpu``; ``cuda`` (this process's GPU, ``cuda:<local_rank>``);
    ``cuda:N``; ``auto`` (``cuda`` when CUDA is available, else ``cpu``).

    A device that is not there is a ConfigError saying what was asked and what is available;
    nothing falls back silently.
    """
    kind, index = parse_device(spec)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        kind = "cuda" if count else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if count == 0:
        raise ConfigError(f"device {spec!r} was asked for but no CUDA device is available; use 'cpu' or 'auto'")
    asked = repr(spec) if index is not None else f"{spec!r} (cuda:{local_rank}, this process's LOCAL_RANK)"
    index = local_rank if index is None else index
    if index >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(f"device {asked} is not available: this machine has {count} CUDA device(s) ({have})")
    return torch.device("cuda", index)


def init_from_env(device: str = "auto") -> DistContext:
    """Start the process group from torchrun's environment (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialized_here = True
    return DistContext(rank, world_size, local_rank, dev, initialized_here)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_ordered(t: torch.Tensor, ctx: DistContext, total: int) -> torch.Tensor:
    """Gather per-rank shards made with ``range(rank, total, world_size)`` back into dataset order."""
    if not ctx.enabled:
        return t
    per_rank = (total + ctx.world_size - 1) // ctx.world_size
    pad = torch.zeros((per_rank - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
    local = torch.cat([t.cpu(), pad]).to(ctx.device if dist.get_backend() == "nccl" else "cpu")
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    out = torch.empty((total,) + tuple(t.shape[1:]), dtype=t.dtype)
    for r, g in enumerate(gathered):
        n = len(range(r, total, ctx.world_size))
        out[r::ctx.world_size] = g[:n].cpu()
    return out


def _collective_device(t: torch.Tensor) -> torch.device:
    return t.device if dist.get_backend() == "nccl" else torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (equal shapes on every rank); the backward sums the incoming
    gradient over ranks (one all-reduce) and returns this rank's slice of it."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.size = rank, t.shape[0]
        local = t.detach().contiguous().to(_collective_device(t))
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(t.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().to(_collective_device(grad))
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        own = total[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size].to(grad.device)
        return own, None, None


def gather_with_grad(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's ``t`` (same shape on every rank) concatenated along dim 0 in rank order, with
    gradients: the backward sums the gradients of all ranks' copies (see the module docstring for
    why this, with DDP's averaging, gives the one-process gradient). ``t`` itself in one process.
    The class-balanced sampler gives every rank the same number of samples (no per-step shape
    exchange is made).

    Written here rather than with ``torch.distributed.nn.functional.all_gather`` (deprecated in
    torch 2.14, and its gloo backward needs all-to-all): one all-gather forward, one all-reduce
    backward, which every backend has.
    """
    if not ctx.enabled:
        return t
    return _GatherWithGrad.apply(t, ctx.rank, ctx.world_size)


def gather_labels(y: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's labels concatenated in rank order (no gradient); ``y`` in one process."""
    if not ctx.enabled:
        return y
    local = y.contiguous().to(_collective_device(y))
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(y.device)
