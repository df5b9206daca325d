"""The paper's DML losses by name, built on pytorch-metric-learning with reference settings.

``build_loss(name, num_classes, embedding_dim, **overrides)`` returns an ``nn.Module`` with
``forward(embeddings, labels) -> scalar`` and ``param_groups() -> [{"name", "params", "lr_mult"}]``
(parameters that need their own learning rate: proxies, the NIR flow; empty for pair losses).
Names are case-insensitive:

=============  ===========================================================================
``C1``         contrastive, positive margin 0, negative margin 0.5
``C2``         contrastive with MLRC-tuned margins per dataset (``dataset=``) or explicit ones
``Triplet``    triplet margin 0.05 over all margin-violating triplets of the batch
``MS``         multi-similarity (alpha 2, beta 50, base 0.5) with the MS miner (epsilon 0.1)
``XBM``        contrastive batch loss + cross-batch-memory loss, memory on after 1000 iterations
``PNCA``       ProxyNCA++ loss: softmax over all proxies, scale 9 (temperature 1/9); proxies x100
``PAnchor``    Proxy-Anchor (alpha 32, margin 0.1); proxies x100
``PAnchor+NIR``/``PNCA+NIR``  ``L_NIR + w * L_proxy`` (NIR settings: proxies x4000, flow x50)
=============  ===========================================================================

Every loss accepts ``dataset`` (``cub``, ``cars196``, ``sop``, ``inshop``), used where the loss has
per-dataset reference settings (C2 margins, NIR weight ``w``) and otherwise only validated, so a
config can pass it to any loss. State (XBM memory and its pointer, iteration counters) lives in
buffers, so ``state_dict`` round trips restore it exactly.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Optional

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import Tensor, nn

from gspdml.errors import ConfigError, InputError, unknown_choice
from gspdml.losses.nir import NIRLoss

__all__ = [
    "LOSSES",
    "build_loss",
    "loss_arguments",
    "DMLLoss",
    "PairLoss",
    "XBMLoss",
    "ProxyLoss",
    "NIRProxyLoss",
    "DATASETS",
    "C2_MARGINS",
    "NIR_WEIGHTS",
]

log = logging.getLogger(__name__)

DATASETS = ("cub", "cars196", "sop", "inshop")
_DATASET_ALIASES = {"cub200": "cub", "cub-200-2011": "cub", "cars": "cars196", "stanford_online_products": "sop", "in-shop": "inshop"}
#: MLRC-tuned contrastive margins (pos, neg). In-shop has no tuned value: SOP's are used.
C2_MARGINS = {"cub": (0.0, 0.3841), "cars196": (0.2652, 0.5409), "sop": (0.2850, 0.5130), "inshop": (0.2850, 0.5130)}
#: NIR's weight w of the proxy loss in L_NIR + w * L_proxy. In-shop: SOP's value.
NIR_WEIGHTS = {"cub": 0.0075, "cars196": 0.01, "sop": 0.3, "inshop": 0.3}


def _dataset_key(dataset: Optional[str], loss: str) -> Optional[str]:
    if dataset is None:
        return None
    key = str(dataset).strip().lower()
    key = _DATASET_ALIASES.get(key, key)
    if key not in DATASETS:
        raise ConfigError(
            f"loss {loss!r}: unknown dataset {dataset!r} for the reference settings; valid choices are: "
            f"{', '.join(DATASETS)} (or leave it unset and give the settings explicitly)"
        )
    return key


def _check_batch(embeddings: Tensor, labels: Tensor, where: str, embedding_dim: Optional[int] = None) -> None:
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
    """Base class of the losses built by :func:`build_loss`."""

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
        _check_batch(embeddings, labels, self.name, self.embedding_dim)
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


class XBMLoss(DMLLoss):
    """Cross-batch memory (Wang et al. 2020) with a contrastive loss.

    ``L = L_contrastive(batch) + memory_weight * L_contrastive(batch vs memory)``. During the first
    ``warmup_iters`` training iterations only the batch loss is used and nothing is enqueued (as in
    the XBM code); afterwards each training step enqueues the batch (detached) into a FIFO memory
    of ``memory_size`` embeddings (PML's ``CrossBatchMemory``) and adds the memory loss. The
    iteration counter, the memory and its write pointer are buffers (checkpointed). Forward calls
    in eval mode neither count iterations nor touch the memory (batch loss only).
    """

    def __init__(
        self,
        embedding_dim: int,
        memory_size: int = 4096,
        warmup_iters: int = 1000,
        pos_margin: float = 0.0,
        neg_margin: float = 0.5,
        memory_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if memory_size <= 0 or warmup_iters < 0:
            raise ConfigError(f"XBM: memory_size must be > 0 and warmup_iters >= 0, got {memory_size}, {warmup_iters}")
        self.name = "XBM"
        self.embedding_dim = embedding_dim
        self.warmup_iters = int(warmup_iters)
        self.memory_weight = float(memory_weight)
        self.batch_loss = pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)
        self.memory = pml_losses.CrossBatchMemory(
            pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), embedding_dim, memory_size=memory_size
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.bool))

    @property
    def memory_active(self) -> bool:
        """Whether the memory loss is used from the next training step on."""
        return int(self.iteration) >= self.warmup_iters

    def memory_contents(self) -> tuple[Tensor, Tensor]:
        """The valid part of the memory: ``(embeddings (M, D), labels (M,))``."""
        n = self.memory.memory_size if bool(self.memory_filled) else int(self.queue_idx)
        return self.memory.embedding_memory[:n], self.memory.label_memory[:n]

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_batch(embeddings, labels, self.name, self.embedding_dim)
        loss = self.batch_loss(embeddings, labels)
        if not self.training:
            return loss
        if embeddings.shape[0] > self.memory.memory_size:
            raise InputError(f"XBM: batch size {embeddings.shape[0]} exceeds memory_size {self.memory.memory_size}")
        self.iteration += 1
        if int(self.iteration) <= self.warmup_iters:
            return loss
        # PML keeps the pointer in plain attributes: restore them from our buffers and write back.
        self.memory.queue_idx = int(self.queue_idx)
        self.memory.has_been_filled = bool(self.memory_filled)
        memory_loss = self.memory(embeddings, labels)
        self.queue_idx.fill_(int(self.memory.queue_idx))
        self.memory_filled.fill_(bool(self.memory.has_been_filled))
        return loss + self.memory_weight * memory_loss


class ProxyLoss(DMLLoss):
    """A PML proxy loss (``ProxyNCALoss``/``ProxyAnchorLoss``); proxies get ``lr_mult``."""

    def __init__(self, name: str, loss: nn.Module, embedding_dim: int, proxy_lr_mult: float = 100.0) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        self.embedding_dim = embedding_dim
        self.proxy_lr_mult = float(proxy_lr_mult)

    @property
    def proxies(self) -> nn.Parameter:
        return self.loss.proxies

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_batch(embeddings, labels, self.name, self.embedding_dim)
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
    """``L_NIR(emb | proxies[labels]) + proxy_weight * L_proxy(emb, labels)`` (Roth et al. 2022)."""

    def __init__(self, proxy_loss: ProxyLoss, nir: NIRLoss, proxy_weight: float, flow_lr_mult: float = 50.0) -> None:
        super().__init__()
        self.name = f"{proxy_loss.name}+NIR"
        self.proxy_loss = proxy_loss
        self.nir = nir
        self.proxy_weight = float(proxy_weight)
        self.flow_lr_mult = float(flow_lr_mult)
        self.embedding_dim = proxy_loss.embedding_dim

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        proxy = self.proxy_loss(embeddings, labels)
        return self.nir(embeddings, self.proxy_loss.proxies, labels) + self.proxy_weight * proxy

    def param_groups(self) -> list[dict]:
        return self.proxy_loss.param_groups() + [
            {"name": "nir_flow", "params": list(self.nir.parameters()), "lr_mult": self.flow_lr_mult}
        ]


# ----------------------------------------------------------------------------------- builders


def _c1(num_classes: int, embedding_dim: int, pos_margin: float = 0.0, neg_margin: float = 0.5, dataset: Optional[str] = None) -> DMLLoss:
    _dataset_key(dataset, "C1")
    return PairLoss("C1", pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), embedding_dim=embedding_dim)


def _c2(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    pos_margin: Optional[float] = None,
    neg_margin: Optional[float] = None,
) -> DMLLoss:
    key = _dataset_key(dataset, "C2")
    if key is None and (pos_margin is None or neg_margin is None):
        raise ConfigError("loss 'C2': give dataset (cub, cars196, sop, inshop) or both pos_margin and neg_margin")
    ref_pos, ref_neg = C2_MARGINS[key] if key else (None, None)
    if key == "inshop" and (pos_margin is None or neg_margin is None):
        log.info("C2: no MLRC-tuned margins for In-shop; using SOP's (%.4f / %.4f)", ref_pos, ref_neg)
    pos = ref_pos if pos_margin is None else pos_margin
    neg = ref_neg if neg_margin is None else neg_margin
    return PairLoss("C2", pml_losses.ContrastiveLoss(pos_margin=pos, neg_margin=neg), embedding_dim=embedding_dim)


def _triplet(num_classes: int, embedding_dim: int, margin: float = 0.05, triplets: str = "all", dataset: Optional[str] = None) -> DMLLoss:
    _dataset_key(dataset, "Triplet")
    if triplets not in ("all", "hard", "semihard"):
        raise ConfigError(f"loss 'Triplet': triplets must be 'all', 'hard' or 'semihard', got {triplets!r}")
    return PairLoss(
        "Triplet",
        pml_losses.TripletMarginLoss(margin=margin),
        pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=triplets),
        embedding_dim=embedding_dim,
    )


def _ms(
    num_classes: int,
    embedding_dim: int,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    miner_epsilon: Optional[float] = 0.1,
    dataset: Optional[str] = None,
) -> DMLLoss:
    _dataset_key(dataset, "MS")
    miner = pml_miners.MultiSimilarityMiner(epsilon=miner_epsilon) if miner_epsilon is not None else None
    return PairLoss("MS", pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base), miner, embedding_dim=embedding_dim)


def _xbm(
    num_classes: int,
    embedding_dim: int,
    memory_size: int = 4096,
    warmup_iters: int = 1000,
    pos_margin: float = 0.0,
    neg_margin: float = 0.5,
    memory_weight: float = 1.0,
    dataset: Optional[str] = None,
) -> DMLLoss:
    _dataset_key(dataset, "XBM")
    return XBMLoss(embedding_dim, memory_size, warmup_iters, pos_margin, neg_margin, memory_weight)


def _pnca_module(num_classes: int, embedding_dim: int, softmax_scale: float) -> nn.Module:
    return pml_losses.ProxyNCALoss(num_classes=num_classes, embedding_size=embedding_dim, softmax_scale=softmax_scale)


def _panchor_module(num_classes: int, embedding_dim: int, alpha: float, margin: float) -> nn.Module:
    return pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, alpha=alpha)


def _pnca(num_classes: int, embedding_dim: int, softmax_scale: float = 9.0, proxy_lr_mult: float = 100.0, dataset: Optional[str] = None) -> DMLLoss:
    _dataset_key(dataset, "PNCA")
    return ProxyLoss("PNCA", _pnca_module(num_classes, embedding_dim, softmax_scale), embedding_dim, proxy_lr_mult)


def _panchor(
    num_classes: int, embedding_dim: int, alpha: float = 32.0, margin: float = 0.1, proxy_lr_mult: float = 100.0, dataset: Optional[str] = None
) -> DMLLoss:
    _dataset_key(dataset, "PAnchor")
    return ProxyLoss("PAnchor", _panchor_module(num_classes, embedding_dim, alpha, margin), embedding_dim, proxy_lr_mult)


def _nir_parts(name: str, embedding_dim: int, dataset, proxy_weight, nir_kwargs) -> tuple[NIRLoss, float]:
    key = _dataset_key(dataset, name)
    if proxy_weight is None:
        if key is None:
            raise ConfigError(f"loss {name!r}: give dataset (cub, cars196, sop, inshop) or proxy_weight")
        proxy_weight = NIR_WEIGHTS[key]
    return NIRLoss(embedding_dim, **nir_kwargs), float(proxy_weight)


def _panchor_nir(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    proxy_weight: Optional[float] = None,
    alpha: float = 32.0,
    margin: float = 0.1,
    proxy_lr_mult: float = 4000.0,
    flow_lr_mult: float = 50.0,
    num_blocks: int = 5,
    hidden: int = 128,
    num_hidden_layers: int = 7,
    clamp: float = 2.0,
    objective: str = "exp",
) -> DMLLoss:
    nir, w = _nir_parts("PAnchor+NIR", embedding_dim, dataset, proxy_weight,
                        dict(num_blocks=num_blocks, hidden=hidden, num_hidden_layers=num_hidden_layers, clamp=clamp, objective=objective))
    proxy = ProxyLoss("PAnchor", _panchor_module(num_classes, embedding_dim, alpha, margin), embedding_dim, proxy_lr_mult)
    return NIRProxyLoss(proxy, nir, w, flow_lr_mult)


def _pnca_nir(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    proxy_weight: Optional[float] = None,
    softmax_scale: float = 9.0,
    proxy_lr_mult: float = 4000.0,
    flow_lr_mult: float = 50.0,
    num_blocks: int = 5,
    hidden: int = 128,
    num_hidden_layers: int = 7,
    clamp: float = 2.0,
    objective: str = "exp",
) -> DMLLoss:
    nir, w = _nir_parts("PNCA+NIR", embedding_dim, dataset, proxy_weight,
                        dict(num_blocks=num_blocks, hidden=hidden, num_hidden_layers=num_hidden_layers, clamp=clamp, objective=objective))
    proxy = ProxyLoss("PNCA", _pnca_module(num_classes, embedding_dim, softmax_scale), embedding_dim, proxy_lr_mult)
    return NIRProxyLoss(proxy, nir, w, flow_lr_mult)


#: Canonical loss name -> builder ``(num_classes, embedding_dim, **settings) -> DMLLoss``.
LOSSES: dict[str, Callable[..., DMLLoss]] = {
    "C1": _c1,
    "C2": _c2,
    "Triplet": _triplet,
    "MS": _ms,
    "XBM": _xbm,
    "PNCA": _pnca,
    "PAnchor": _panchor,
    "PAnchor+NIR": _panchor_nir,
    "PNCA+NIR": _pnca_nir,
}


def loss_arguments(name: str) -> dict[str, Any]:
    """The settings a loss accepts with their defaults (reference values)."""
    builder = LOSSES[_canonical(name)]
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace(" ", "")
    for canonical in LOSSES:
        if canonical.lower() == key:
            return canonical
    raise unknown_choice("loss", name, LOSSES)


def build_loss(name: str, num_classes: int, embedding_dim: int, **overrides: Any) -> DMLLoss:
    """Build the loss ``name`` (case-insensitive) with reference settings, overridden by ``overrides``.

    ``num_classes`` is the number of training classes (proxy count), ``embedding_dim`` the
    embedding size. Unknown names or settings raise :class:`ConfigError` listing the choices.
    """
    canonical = _canonical(name)
    accepted = loss_arguments(canonical)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ConfigError(
            f"loss {canonical!r} does not accept setting(s) {', '.join(unknown)}; accepted settings: {', '.join(accepted)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"loss {canonical!r}: num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ConfigError(f"loss {canonical!r}: embedding_dim must be a positive int, got {embedding_dim!r}")
    return LOSSES[canonical](num_classes, embedding_dim, **overrides)
