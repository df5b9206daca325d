"""Retrieval metrics (MAP@R, R-Precision, P@1, Recall@K) and the MLRC protocol."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'compute_retrieval_metrics': 'gspdml.evaluation.metrics',
    'embed_dataset': 'gspdml.evaluation.embed',
    'run_protocol': 'gspdml.evaluation.protocol',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
