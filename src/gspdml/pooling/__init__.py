"""Pooling layers: GSP (exact optimal-transport pooling) and the baselines."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'GSP': 'gspdml.pooling.gsp',
    'partial_transport': 'gspdml.pooling.functional',
    'TransportResult': 'gspdml.pooling.functional',
    'prototype_cost': 'gspdml.pooling.functional',
    'Pooling': 'gspdml.pooling.baselines',
    'build_pooling': 'gspdml.pooling.registry',
    'POOLINGS': 'gspdml.pooling.registry',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
