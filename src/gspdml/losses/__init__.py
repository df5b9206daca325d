"""Losses: the paper's DML losses (factory over pytorch-metric-learning), L_ZS and NIR."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'build_loss': 'gspdml.losses.factory',
    'LOSSES': 'gspdml.losses.factory',
    'ZeroShotLoss': 'gspdml.losses.zeroshot',
    'NIRLoss': 'gspdml.losses.nir',
    'matched_scale': 'gspdml.losses.zeroshot',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
