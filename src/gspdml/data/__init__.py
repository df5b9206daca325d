"""Datasets, collage generators, samplers, transforms and splits."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'build_dataset': 'gspdml.data.registry',
    'DATASETS': 'gspdml.data.registry',
    'ClassBalancedBatchSampler': 'gspdml.data.samplers',
    'mlrc_folds': 'gspdml.data.splits',
    'subset_by_classes': 'gspdml.data.splits',
    'build_transform': 'gspdml.data.transforms',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
