"""Backbones (registered in ``BACKBONES``), the embedding head and the embedding model."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'BACKBONES': 'gspdml.models.backbones',
    'build_backbone': 'gspdml.models.backbones',
    'EmbeddingModel': 'gspdml.models.embedding',
    'build_model': 'gspdml.models.embedding',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
