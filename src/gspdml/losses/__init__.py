"""Losses: the paper's DML losses (wrappers over pytorch-metric-learning, built by name from the
``LOSSES`` registry with the reference settings of :mod:`gspdml.losses.presets`), L_ZS and NIR."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'LOSSES': 'gspdml.losses.builtin',
    'build_loss': 'gspdml.losses.builtin',
    'loss_arguments': 'gspdml.losses.builtin',
    'with_nir': 'gspdml.losses.builtin',
    'DMLLoss': 'gspdml.losses.wrappers',
    'PairLoss': 'gspdml.losses.wrappers',
    'XBMLoss': 'gspdml.losses.wrappers',
    'ProxyLoss': 'gspdml.losses.wrappers',
    'NIRProxyLoss': 'gspdml.losses.wrappers',
    'ZeroShotLoss': 'gspdml.losses.zeroshot',
    'matched_scale': 'gspdml.losses.zeroshot',
    'NIRLoss': 'gspdml.losses.nir',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
