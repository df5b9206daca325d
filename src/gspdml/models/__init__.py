"""Backbones, the embedding head and the embedding model."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'EmbeddingModel': 'gspdml.models.embedding',
    'build_model': 'gspdml.models.embedding',
    'build_backbone': 'gspdml.models.backbones',
    'register_backbone': 'gspdml.models.backbones',
    'BACKBONES': 'gspdml.models.backbones',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
