"""Datasets, collage generators, samplers, transforms and splits."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'build_dataset': 'gspdml.data.registry',
    'DATASETS': 'gspdml.data.registry',
    'ClassBalancedBatchSampler': 'gspdml.data.samplers',
    'mlrc_folds': 'gspdml.data.splits',
    'subset_by_classes': 'gspdml.data.splits',
    'split_train_val': 'gspdml.data.splits',
    'relabeled': 'gspdml.data.splits',
    'split_batch': 'gspdml.data.batches',
    'move_input': 'gspdml.data.batches',
    'dataset_labels': 'gspdml.data.batches',
    'build_transform': 'gspdml.data.transforms',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
