"""gspdml: Generalized Sum Pooling for deep metric learning.

The public API is re-exported here and imported lazily, so ``import gspdml`` stays cheap and a
command only loads what it uses::

    import torch, gspdml
    pool = gspdml.GSP(dim=128, num_prototypes=64, mu=0.3, eps=5.0)
    emb = pool(torch.randn(8, 128, 7, 7))          # (8, 128)
"""
from __future__ import annotations

from gspdml._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # pooling
    "GSP": "gspdml.pooling",
    "partial_transport": "gspdml.pooling",
    "TransportResult": "gspdml.pooling",
    "build_pooling": "gspdml.pooling",
    "POOLINGS": "gspdml.pooling",
    # models
    "EmbeddingModel": "gspdml.models",
    "build_model": "gspdml.models",
    "build_backbone": "gspdml.models",
    # losses
    "build_loss": "gspdml.losses",
    "ZeroShotLoss": "gspdml.losses",
    "NIRLoss": "gspdml.losses",
    # data
    "build_dataset": "gspdml.data",
    # evaluation
    "compute_retrieval_metrics": "gspdml.evaluation",
    # config and engine
    "load_config": "gspdml.config",
    "TrainConfig": "gspdml.config",
    "train": "gspdml.engine",
    # errors
    "GspdmlError": "gspdml.errors",
    "InputError": "gspdml.errors",
    "ConfigError": "gspdml.errors",
    "DataError": "gspdml.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__():
    return __all__
