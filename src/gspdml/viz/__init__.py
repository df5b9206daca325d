"""Plots: pooling-weight maps, prototype histograms, embedding geometry."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'plot_weight_maps': 'gspdml.viz.weights',
    'plot_prototype_histograms': 'gspdml.viz.prototypes',
    'plot_embedding_geometry': 'gspdml.viz.geometry',
    'plot_protocol_summary': 'gspdml.viz.protocol',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
