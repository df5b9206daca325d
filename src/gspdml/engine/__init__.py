"""Train state, the training loop, optimiser/scheduler builders, dataset preparation, evaluation with
a model, checkpoints, run folders, distributed training, the MLRC protocol driver."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'train': 'gspdml.engine.trainer',
    'RunResult': 'gspdml.engine.runs',
    'TrainState': 'gspdml.engine.state',
    'TrainModule': 'gspdml.engine.state',
    'embed_dataset': 'gspdml.engine.evaluate',
    'evaluate_model': 'gspdml.engine.evaluate',
    'run_protocol': 'gspdml.engine.protocol',
    'ProtocolResult': 'gspdml.engine.protocol',
    'load_model_from_checkpoint': 'gspdml.engine.checkpoint',
    'check_not_collapsed': 'gspdml.engine.evaluate',
    'Interrupted': 'gspdml.engine.runs',
    'TrainingDiverged': 'gspdml.engine.runs',
    'RunFolderLocked': 'gspdml.engine.runs',
    'RunLock': 'gspdml.engine.runs',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
