"""Pooling layers: the :class:`Pooling` base, GSP (exact optimal-transport pooling), the
baselines (one module each, registered in :data:`POOLINGS`) and GSP's solver
(:mod:`gspdml.pooling.transport`)."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'GSP': 'gspdml.pooling.gsp',
    'Pooling': 'gspdml.pooling.base',
    'POOLINGS': 'gspdml.pooling.registry',
    'build_pooling': 'gspdml.pooling.registry',
    'partial_transport': 'gspdml.pooling.transport',
    'TransportResult': 'gspdml.pooling.transport',
    'prototype_cost': 'gspdml.pooling.transport',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
