"""Analyses of trained models (arrays or a model in, numbers out): zero-shot attribute evaluation,
pooling-weight maps, prototype assignments."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'evaluate_zero_shot': 'gspdml.analysis.zeroshot',
    'zero_shot_map': 'gspdml.analysis.zeroshot',
    'evaluate_model_zero_shot': 'gspdml.analysis.zeroshot',
    'class_means': 'gspdml.analysis.zeroshot',
    'collect_model_outputs': 'gspdml.analysis.zeroshot',
    'pooling_weight_maps': 'gspdml.analysis.weights',
    'transport_plans': 'gspdml.analysis.assignments',
    'dominant_assignments': 'gspdml.analysis.assignments',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
