"""The paper's DML losses by name: builders over pytorch-metric-learning, registered in ``LOSSES``.

``build_loss(name, num_classes, embedding_dim, **settings)`` returns a
:class:`~gspdml.losses.wrappers.DMLLoss`. Names are case-insensitive; defaults are the reference
settings (:mod:`gspdml.losses.presets`):

=============  ===========================================================================
``C1``         contrastive, positive margin 0, negative margin 0.5
``C2``         contrastive with MLRC-tuned margins per dataset (``dataset=``) or explicit ones
``Triplet``    triplet margin 0.05 over all margin-violating triplets of the batch
``MS``         multi-similarity (alpha 2, beta 50, base 0.5), no miner (``miner_epsilon``: the MS miner)
``XBM``        the authors' contrastive (cosine, margin 0.5) on the batch + against a memory of
               25/25/1400/400 batches of 32 by ``dataset``; memory fills after 1000 steps, its loss
               starts once it is full
``PNCA``       ProxyNCA as the GSP authors: softmax over cos / 0.11 to all proxies; proxies x100
               (``similarity="squared_l2"``: ProxyNCA++'s squared distance)
``PNCA++``     ProxyNCA++ loss: softmax over -||x - p||^2 / T, T = 1/9; proxies x1e5 (SOP x1e4)
``PAnchor``    Proxy-Anchor (alpha 32, margin 0.1); proxies x100
``PAnchor+NIR``/``PNCA+NIR``  ``L_NIR + w * L_proxy`` (NIR: FrEIA flow, proxies x4000, flow x50)
=============  ===========================================================================

Every loss accepts ``dataset`` (``cub``, ``cars196``, ``sop``, ``inshop``), used where the loss has
per-dataset reference settings (C2 margins, XBM memory, PNCA++ proxy lr, NIR weight ``w``) and otherwise only validated, so a
config can pass it to any loss. A proxy loss's ``proxy_lr_mult`` is the one setting of its proxies'
learning-rate multiplier. A new loss is a builder ``(num_classes, embedding_dim, **settings) ->
DMLLoss`` registered with ``@LOSSES.register("Name")``; ``with_nir(builder, "Name+NIR")`` adds NIR
to any proxy-loss builder.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Callable, Optional

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from gspdml.errors import ConfigError
from gspdml.losses.nir import NIRLoss
from gspdml.losses.presets import (
    C2_MARGINS,
    DATASETS,
    NIR_FLOW_LR_MULT,
    NIR_PROXY_LR_MULT,
    NIR_WEIGHTS,
    PNCA_PP_PROXY_LR_MULT,
    PNCA_PP_TEMPERATURE,
    PNCA_TEMPERATURE,
    PROXY_LR_MULT,
    XBM_MEMORY_SIZES,
    XBM_START,
    dataset_key,
)
from gspdml.losses.wrappers import DMLLoss, NIRProxyLoss, PairLoss, ProxyLoss, XBMLoss
from gspdml.registry import Registry

__all__ = ["LOSSES", "build_loss", "loss_arguments", "with_nir"]

log = logging.getLogger(__name__)

#: Loss name -> builder ``(num_classes, embedding_dim, **settings) -> DMLLoss``.
LOSSES = Registry("loss", skip_args=("num_classes", "embedding_dim"), noun="setting")


def _per_dataset(value: Any, setting: str, table: dict, key: Optional[str], loss: str) -> Any:
    """``value``, or when it is None the reference value of dataset ``key`` in ``table``; neither
    is a ConfigError naming ``loss``, ``setting`` and the datasets."""
    if value is not None:
        return value
    if key is None:
        raise ConfigError(f"loss {loss!r}: give dataset ({', '.join(DATASETS)}) or {setting}")
    return table[key]


@LOSSES.register("C1")
def c1(num_classes: int, embedding_dim: int, pos_margin: float = 0.0, neg_margin: float = 0.5, dataset: Optional[str] = None) -> DMLLoss:
    dataset_key(dataset, "C1")
    return PairLoss("C1", pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), embedding_dim=embedding_dim)


@LOSSES.register("C2")
def c2(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    pos_margin: Optional[float] = None,
    neg_margin: Optional[float] = None,
) -> DMLLoss:
    key = dataset_key(dataset, "C2")
    if key is None and (pos_margin is None or neg_margin is None):
        raise ConfigError(f"loss 'C2': give dataset ({', '.join(DATASETS)}) or both pos_margin and neg_margin")
    ref_pos, ref_neg = C2_MARGINS[key] if key else (None, None)
    if key == "inshop" and (pos_margin is None or neg_margin is None):
        log.info("C2: no MLRC-tuned margins for In-shop; using SOP's (%.4f / %.4f)", ref_pos, ref_neg)
    pos = ref_pos if pos_margin is None else pos_margin
    neg = ref_neg if neg_margin is None else neg_margin
    return PairLoss("C2", pml_losses.ContrastiveLoss(pos_margin=pos, neg_margin=neg), embedding_dim=embedding_dim)


@LOSSES.register("Triplet")
def triplet(num_classes: int, embedding_dim: int, margin: float = 0.05, triplets: str = "all", dataset: Optional[str] = None) -> DMLLoss:
    dataset_key(dataset, "Triplet")
    if triplets not in ("all", "hard", "semihard"):
        raise ConfigError(f"loss 'Triplet': triplets must be 'all', 'hard' or 'semihard', got {triplets!r}")
    return PairLoss(
        "Triplet",
        pml_losses.TripletMarginLoss(margin=margin),
        pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=triplets),
        embedding_dim=embedding_dim,
    )


@LOSSES.register("MS")
def multi_similarity(
    num_classes: int,
    embedding_dim: int,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    miner_epsilon: Optional[float] = None,
    dataset: Optional[str] = None,
) -> DMLLoss:
    dataset_key(dataset, "MS")
    miner = pml_miners.MultiSimilarityMiner(epsilon=miner_epsilon) if miner_epsilon is not None else None
    return PairLoss("MS", pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base), miner, embedding_dim=embedding_dim)


@LOSSES.register("XBM")
def xbm(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    memory_size: Optional[int] = None,
    warmup_iters: int = XBM_START,
    pair_loss: str = "original_contrastive",
    margin: float = 0.5,
    pos_margin: float = 0.0,
    neg_margin: float = 0.5,
    memory_weight: float = 1.0,
) -> DMLLoss:
    key = dataset_key(dataset, "XBM")
    memory_size = _per_dataset(memory_size, "memory_size", XBM_MEMORY_SIZES, key, "XBM")
    return XBMLoss(embedding_dim, memory_size, warmup_iters, pos_margin, neg_margin, memory_weight, pair_loss, margin)


#: The similarities of ``PNCA``: the GSP authors' cosine and ProxyNCA++'s squared distance.
PNCA_SIMILARITIES = ("cosine", "squared_l2")


def _check_positive(value: Any, what: str, loss: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"loss {loss!r}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


@LOSSES.register("PNCA")
def proxy_nca(
    num_classes: int,
    embedding_dim: int,
    softmax_scale: Optional[float] = None,
    similarity: str = "cosine",
    proxy_lr_mult: float = PROXY_LR_MULT,
    dataset: Optional[str] = None,
) -> ProxyLoss:
    dataset_key(dataset, "PNCA")
    if similarity not in PNCA_SIMILARITIES:
        raise ConfigError(f"loss 'PNCA': similarity must be one of {', '.join(PNCA_SIMILARITIES)}, got {similarity!r}")
    if softmax_scale is None:
        softmax_scale = 1.0 / PNCA_TEMPERATURE if similarity == "cosine" else 1.0 / PNCA_PP_TEMPERATURE
    scale = _check_positive(softmax_scale, "softmax_scale", "PNCA")
    distance = pml_distances.CosineSimilarity() if similarity == "cosine" else pml_distances.LpDistance(power=2)
    loss = pml_losses.ProxyNCALoss(num_classes=num_classes, embedding_size=embedding_dim, softmax_scale=scale, distance=distance)
    return ProxyLoss("PNCA", loss, embedding_dim, proxy_lr_mult)


@LOSSES.register("PNCA++")
def proxy_nca_pp(
    num_classes: int,
    embedding_dim: int,
    dataset: Optional[str] = "cub",
    temperature: float = PNCA_PP_TEMPERATURE,
    proxy_lr_mult: Optional[float] = None,
) -> ProxyLoss:
    key = dataset_key(dataset, "PNCA++")
    temperature = _check_positive(temperature, "temperature", "PNCA++")
    proxy_lr_mult = _per_dataset(proxy_lr_mult, "proxy_lr_mult", PNCA_PP_PROXY_LR_MULT, key, "PNCA++")
    loss = pml_losses.ProxyNCALoss(
        num_classes=num_classes, embedding_size=embedding_dim, softmax_scale=1.0 / temperature,
        distance=pml_distances.LpDistance(power=2),
    )
    with torch.no_grad():  # ProxyNCA++'s initialisation (one draw, as PML's)
        loss.proxies.copy_(torch.randn(num_classes, embedding_dim) / 8)
    return ProxyLoss("PNCA++", loss, embedding_dim, proxy_lr_mult)


@LOSSES.register("PAnchor")
def proxy_anchor(
    num_classes: int,
    embedding_dim: int,
    alpha: float = 32.0,
    margin: float = 0.1,
    proxy_lr_mult: float = PROXY_LR_MULT,
    dataset: Optional[str] = None,
) -> ProxyLoss:
    dataset_key(dataset, "PAnchor")
    loss = pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, alpha=alpha)
    return ProxyLoss("PAnchor", loss, embedding_dim, proxy_lr_mult)


#: The flow settings a ``+NIR`` loss accepts (defaults: :class:`NIRLoss`'s, i.e. the authors').
NIR_FLOW_SETTINGS = ("num_blocks", "hidden", "num_hidden_layers", "clamp", "objective", "cond_mode", "noise", "subnet_init")


def with_nir(base: Callable[..., ProxyLoss], name: str) -> Callable[..., NIRProxyLoss]:
    """The builder of ``name`` = ``L_NIR + w * L_base`` over the proxy-loss builder ``base``.

    Its settings, in order: ``dataset`` (default ``"cub"``; picks ``w`` from ``NIR_WEIGHTS``),
    ``proxy_weight`` (``w``, overrides the dataset's), ``base``'s own settings (its defaults),
    ``proxy_lr_mult`` (x4000), ``flow_lr_mult`` (x50) and the flow's :data:`NIR_FLOW_SETTINGS`.
    """
    P = inspect.Parameter
    own = [p for p in list(inspect.signature(base).parameters.values())[2:] if p.name not in ("dataset", "proxy_lr_mult")]
    flow = inspect.signature(NIRLoss).parameters
    signature = inspect.Signature([
        P("num_classes", P.POSITIONAL_OR_KEYWORD, annotation=int),
        P("embedding_dim", P.POSITIONAL_OR_KEYWORD, annotation=int),
        P("dataset", P.POSITIONAL_OR_KEYWORD, default="cub", annotation=Optional[str]),
        P("proxy_weight", P.POSITIONAL_OR_KEYWORD, default=None, annotation=Optional[float]),
        *own,
        P("proxy_lr_mult", P.POSITIONAL_OR_KEYWORD, default=NIR_PROXY_LR_MULT, annotation=float),
        P("flow_lr_mult", P.POSITIONAL_OR_KEYWORD, default=NIR_FLOW_LR_MULT, annotation=float),
        *(flow[k] for k in NIR_FLOW_SETTINGS),
    ], return_annotation=NIRProxyLoss)

    def build(*args: Any, **kwargs: Any) -> NIRProxyLoss:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        s = bound.arguments
        key = dataset_key(s["dataset"], name)
        weight = _per_dataset(s["proxy_weight"], "proxy_weight", NIR_WEIGHTS, key, name)
        # the flow first, then the proxies: the order in which they draw from the global RNG
        nir = NIRLoss(s["embedding_dim"], **{k: s[k] for k in NIR_FLOW_SETTINGS})
        proxy = base(s["num_classes"], s["embedding_dim"], proxy_lr_mult=s["proxy_lr_mult"], **{p.name: s[p.name] for p in own})
        return NIRProxyLoss(proxy, nir, float(weight), s["flow_lr_mult"])

    build.__signature__ = signature
    build.__name__ = build.__qualname__ = f"{base.__name__}_nir"
    build.__doc__ = f"``{name}``: NIR over the proxy loss built by ``{base.__name__}`` (see :func:`with_nir`)."
    return build


LOSSES.register("PAnchor+NIR", with_nir(proxy_anchor, "PAnchor+NIR"))
LOSSES.register("PNCA+NIR", with_nir(proxy_nca, "PNCA+NIR"))


def loss_arguments(name: str) -> dict[str, Any]:
    """The settings the loss ``name`` accepts with their defaults (reference values)."""
    params = list(inspect.signature(LOSSES.get(name)).parameters.values())[2:]
    return {p.name: p.default for p in params}


def build_loss(name: str, num_classes: int, embedding_dim: int, **overrides: Any) -> DMLLoss:
    """Build the loss ``name`` (case-insensitive) with reference settings, overridden by ``overrides``.

    ``num_classes`` is the number of training classes (proxy count), ``embedding_dim`` the
    embedding size. Unknown names or settings raise :class:`ConfigError` listing the choices.
    """
    LOSSES.check(name, overrides)
    display = LOSSES.display_name(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"loss {display!r}: num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ConfigError(f"loss {display!r}: embedding_dim must be a positive int, got {embedding_dim!r}")
    return LOSSES.get(name)(num_classes, embedding_dim, **overrides)
