"""Analyses of trained models: zero-shot attribute evaluation."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'evaluate_zero_shot': 'gspdml.analysis.zeroshot',
    'zero_shot_map': 'gspdml.analysis.zeroshot',
    'evaluate_model_zero_shot': 'gspdml.analysis.zeroshot',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
