"""Retrieval metrics (MAP@R, R-Precision, P@1, Recall@K; the NIR paper's NMI and mAP@1000) and MLRC
aggregation: pure functions on embeddings and metric dicts (no model, no training)."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'compute_retrieval_metrics': 'gspdml.evaluation.metrics',
    'nmi_score': 'gspdml.evaluation.metrics',
    'map_at_k': 'gspdml.evaluation.metrics',
    'concat_embeddings': 'gspdml.evaluation.mlrc',
    'summarize': 'gspdml.evaluation.mlrc',
    'collection_metrics': 'gspdml.evaluation.mlrc',
    'collection_choices': 'gspdml.evaluation.mlrc',
    'collection_dim128': 'gspdml.evaluation.mlrc',
    'collection_dim512': 'gspdml.evaluation.mlrc',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
