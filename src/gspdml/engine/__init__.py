"""Training loop, checkpoints and distributed training."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'train': 'gspdml.engine.trainer',
    'RunResult': 'gspdml.engine.trainer',
    'load_model_from_checkpoint': 'gspdml.engine.checkpoint',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
