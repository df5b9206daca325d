"""The ``nn.Module`` wrappers that the built-in losses are made of.

Every loss :func:`gspdml.losses.build_loss` returns is a :class:`DMLLoss`:
``forward(embeddings (B, D), labels (B,)) -> scalar`` and ``param_groups() -> [{"name", "params",
"lr_mult"}]`` (parameters with their own learning-rate multiplier: proxies, the NIR flow; empty for
pair losses). A proxy loss exposes its multiplier as ``proxy_lr_mult``.
"""
from __future__ import annotations

from typing import Optional

import torch
from pytorch_metric_learning import losses as pml_losses
import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import ConfigError, InputError
from gspdml.losses.nir import NIRLoss
from gspdml.losses.presets import NIR_FLOW_LR_MULT, PROXY_LR_MULT

__all__ = ["check_batch", "original_contrastive", "DMLLoss", "PairLoss", "XBMLoss", "ProxyLoss", "NIRProxyLoss"]


def check_batch(embeddings: Tensor, labels: Tensor, where: str, embedding_dim: Optional[int] = None) -> None:
    """InputError (prefixed by ``where``) unless ``embeddings`` is (B, D) and ``labels`` is (B,).

    With ``embedding_dim`` given, D must equal it.
    """
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise InputError(f"{where}: embeddings must be a (B, D) tensor, got {getattr(embeddings, 'shape', type(embeddings))}")
    if embedding_dim is not None and embeddings.shape[1] != embedding_dim:
        raise InputError(f"{where}: embeddings have dimension {embeddings.shape[1]}, the loss was built for {embedding_dim}")
    if not isinstance(labels, Tensor) or labels.shape != (embeddings.shape[0],):
        raise InputError(
            f"{where}: labels must be a (B,) tensor matching the {embeddings.shape[0]} embeddings, "
            f"got {getattr(labels, 'shape', type(labels))}"
        )


class DMLLoss(nn.Module):
    """Base class of the losses built by :func:`gspdml.losses.build_loss`."""

    name = "loss"
    embedding_dim: Optional[int] = None

    def param_groups(self) -> list[dict]:
        """Parameters with their own learning-rate multiplier (empty for pair losses)."""
        return []


class PairLoss(DMLLoss):
    """A pytorch-metric-learning loss with an optional miner: ``loss(emb, labels, miner(emb, labels))``."""

    def __init__(self, name: str, loss: nn.Module, miner: Optional[nn.Module] = None, embedding_dim: Optional[int] = None) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        self.miner = miner
        self.embedding_dim = embedding_dim

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_batch(embeddings, labels, self.name, self.embedding_dim)
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def original_contrastive(
    embeddings: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor, margin: float, exclude_self: bool, eps: float = 1e-5
) -> Tensor:
    """The GSP authors' single-margin contrastive loss over (reference, sample) pairs (cosine similarity).

    ``[sum_pos relu(1 - eps - s) + sum_neg relu(s - margin)] / R`` with ``s`` the cosine similarity of
    a reference row (R rows) and a sample; ``exclude_self`` drops the diagonal (``ref`` is the batch).
    The ``eps`` drops positives with ``s > 1 - eps``, e.g. a sample and its own copy in the XBM memory.
    """
    sim = F.normalize(ref, dim=1) @ F.normalize(embeddings, dim=1).T  # (R, N)
    same = ref_labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(*same.shape, dtype=torch.bool, device=same.device) if exclude_self else same
    pos_terms = torch.where(pos, torch.relu(1.0 - eps - sim), torch.zeros_like(sim))
    neg_terms = torch.where(~same, torch.relu(sim - margin), torch.zeros_like(sim))
    return (pos_terms.sum() + neg_terms.sum()) / ref.shape[0]


#: The pair losses of XBM: the GSP authors' ``original_contrastive`` and PML's two-margin contrastive.
XBM_PAIR_LOSSES = ("original_contrastive", "contrastive")


class XBMLoss(DMLLoss):
    """Cross-batch memory (Wang et al. 2020) with a contrastive loss, scheduled as the GSP authors' TF.

    ``L = L_pair(batch) + memory_weight * L_pair(batch vs memory)``. The first ``warmup_iters``
    training steps use the batch loss only and store nothing (the authors' ``start_at``); then every
    training step enqueues the batch (detached) into a FIFO memory of ``memory_size`` embeddings, and
    the memory loss is added from the step at which the memory becomes full (``warmup_iters`` +
    ``ceil(memory_size / batch)`` steps; the authors: ``start_at + batches_in_mem``), always over the
    whole memory, the current batch included. ``pair_loss``: ``"original_contrastive"`` (the authors':
    cosine, ``margin``, :func:`original_contrastive`, the memory term divided by the memory size) or
    ``"contrastive"`` (PML's ``ContrastiveLoss`` with ``pos_margin``/``neg_margin``; the memory term via
    PML's ``CrossBatchMemory``, self pairs removed). The iteration counter, the memory and its write
    pointer are buffers (checkpointed). Forward calls in eval mode neither count nor store.
    """

    def __init__(
        self,
        embedding_dim: int,
        memory_size: int,
        warmup_iters: int,
        pos_margin: float = 0.0,
        neg_margin: float = 0.5,
        memory_weight: float = 1.0,
        pair_loss: str = "original_contrastive",
        margin: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size <= 0:
            raise ConfigError(f"XBM: memory_size must be a positive int, got {memory_size!r}")
        if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
            raise ConfigError(f"XBM: warmup_iters must be an int >= 0, got {warmup_iters!r}")
        if pair_loss not in XBM_PAIR_LOSSES:
            raise ConfigError(f"XBM: pair_loss must be one of {', '.join(XBM_PAIR_LOSSES)}, got {pair_loss!r}")
        self.name = "XBM"
        self.embedding_dim = embedding_dim
        self.warmup_iters = int(warmup_iters)
        self.memory_weight = float(memory_weight)
        self.pair_loss = pair_loss
        self.margin = float(margin)
        self.batch_loss = pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)
        self.memory = pml_losses.CrossBatchMemory(
            pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), embedding_dim, memory_size=memory_size
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.bool))

    @property
    def memory_active(self) -> bool:
        """Whether the next training step stores its batch (the warm-up is over)."""
        return int(self.iteration) >= self.warmup_iters

    @property
    def memory_loss_active(self) -> bool:
        """Whether the memory is full, i.e. the memory loss is used from the next training step on."""
        return bool(self.memory_filled)

    def memory_contents(self) -> tuple[Tensor, Tensor]:
        """The valid part of the memory: ``(embeddings (M, D), labels (M,))``."""
        n = self.memory.memory_size if bool(self.memory_filled) else int(self.queue_idx)
        return self.memory.embedding_memory[:n], self.memory.label_memory[:n]

    def _pair(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.pair_loss == "contrastive":
            return self.batch_loss(embeddings, labels)
        return original_contrastive(embeddings, labels, embeddings, labels, self.margin, exclude_self=True)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_batch(embeddings, labels, self.name, self.embedding_dim)
        loss = self._pair(embeddings, labels)
        if not self.training:
            return loss
        if embeddings.shape[0] > self.memory.memory_size:
            raise InputError(f"XBM: batch size {embeddings.shape[0]} exceeds memory_size {self.memory.memory_size}")
        self.iteration += 1
        if int(self.iteration) <= self.warmup_iters:
            return loss
        # PML keeps the pointer in plain attributes: restore them from our buffers and write back.
        mem = self.memory
        mem.queue_idx = int(self.queue_idx)
        mem.has_been_filled = bool(self.memory_filled)
        mem.embedding_memory = mem.embedding_memory.to(device=embeddings.device, dtype=embeddings.dtype)
        mem.label_memory = mem.label_memory.to(device=labels.device, dtype=labels.dtype)
        full_before = mem.has_been_filled
        if self.pair_loss == "contrastive" and full_before:
            memory_loss: Optional[Tensor] = mem(embeddings, labels)
        else:
            mem.add_to_memory(embeddings, labels, embeddings.shape[0])
            memory_loss = None
            if mem.has_been_filled:
                if self.pair_loss == "contrastive":
                    # the batch just filled the memory: the loss over it, as CrossBatchMemory computes it
                    # (self pairs removed)
                    indices = mem.create_indices_tuple(
                        embeddings, labels, mem.embedding_memory, mem.label_memory, None, True
                    )
                    memory_loss = mem.loss(embeddings, labels, indices, mem.embedding_memory, mem.label_memory)
                else:
                    memory_loss = original_contrastive(
                        embeddings, labels, mem.embedding_memory, mem.label_memory, self.margin, exclude_self=False
                    )
        self.queue_idx.fill_(int(mem.queue_idx))
        self.memory_filled.fill_(bool(mem.has_been_filled))
        if memory_loss is None:
            return loss
        return loss + self.memory_weight * memory_loss


class ProxyLoss(DMLLoss):
    """A PML proxy loss (``ProxyNCALoss``/``ProxyAnchorLoss``); the proxies get ``proxy_lr_mult``."""

    def __init__(self, name: str, loss: nn.Module, embedding_dim: int, proxy_lr_mult: float = PROXY_LR_MULT) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        self.embedding_dim = embedding_dim
        self.proxy_lr_mult = float(proxy_lr_mult)

    @property
    def proxies(self) -> nn.Parameter:
        return self.loss.proxies

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_batch(embeddings, labels, self.name, self.embedding_dim)
        n = self.proxies.shape[0]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
            raise InputError(
                f"{self.name}: labels must lie in [0, {n - 1}] (one proxy per training class), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        return self.loss(embeddings, labels)

    def param_groups(self) -> list[dict]:
        return [{"name": "proxies", "params": [self.proxies], "lr_mult": self.proxy_lr_mult}]


class NIRProxyLoss(DMLLoss):
    """``L_NIR(emb | proxies[labels]) + proxy_weight * L_proxy(emb, labels)`` (Roth et al. 2022).

    Wraps any :class:`ProxyLoss`; its proxies keep their ``proxy_lr_mult``, the flow gets ``flow_lr_mult``.
    """

    def __init__(self, proxy_loss: ProxyLoss, nir: NIRLoss, proxy_weight: float, flow_lr_mult: float = NIR_FLOW_LR_MULT) -> None:
        super().__init__()
        self.name = f"{proxy_loss.name}+NIR"
        self.proxy_loss = proxy_loss
        self.nir = nir
        self.proxy_weight = float(proxy_weight)
        self.flow_lr_mult = float(flow_lr_mult)
        self.embedding_dim = proxy_loss.embedding_dim

    @property
    def proxies(self) -> nn.Parameter:
        return self.proxy_loss.proxies

    @property
    def proxy_lr_mult(self) -> float:
        return self.proxy_loss.proxy_lr_mult

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        proxy = self.proxy_loss(embeddings, labels)
        return self.nir(embeddings, self.proxy_loss.proxies, labels) + self.proxy_weight * proxy

    def param_groups(self) -> list[dict]:
        # as the NIR authors: no weight decay on the proxies and the flow
        proxies = [{**g, "weight_decay": 0.0} for g in self.proxy_loss.param_groups()]
        return proxies + [
            {"name": "nir_flow", "params": list(self.nir.parameters()), "lr_mult": self.flow_lr_mult, "weight_decay": 0.0}
        ]
