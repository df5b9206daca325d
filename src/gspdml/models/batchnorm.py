"""Frozen batch-norm statistics (as in "A Metric Learning Reality Check").

:func:`freeze_batchnorm` makes every BatchNorm layer of a model use and keep its running
statistics: the layers stay in eval mode even when ``model.train()`` is called, so the running
mean/variance never change and normalisation uses them; the affine parameters (``weight``,
``bias``) keep ``requires_grad`` and are trained. The change survives ``state_dict`` round trips
(keys are unchanged) and pickling.

Implementation: each BatchNorm module's class is swapped for a subclass whose ``train()`` always
sets eval mode (the same object, parameters and buffers are kept).
"""
from __future__ import annotations

import sys

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_batchnorm", "unfreeze_batchnorm", "is_frozen_batchnorm", "frozen_batchnorm_layers"]


class FrozenStatsMixin:
    """Mixin for BatchNorm classes: ``train(mode)`` always leaves the layer in eval mode."""

    _gspdml_frozen_bn = True

    def train(self, mode: bool = True):  # noqa: D401 - torch API
        return super().train(False)  # type: ignore[misc]


_FROZEN_CLASSES: dict[type, type] = {}
_ORIGINAL_CLASSES: dict[type, type] = {}


def _frozen_class(cls: type) -> type:
    frozen = _FROZEN_CLASSES.get(cls)
    if frozen is None:
        name = f"FrozenStats{cls.__name__}"
        frozen = type(name, (FrozenStatsMixin, cls), {"__module__": __name__, "__qualname__": name})
        # make the class importable by name so pickled models can be restored
        setattr(sys.modules[__name__], name, frozen)
        _FROZEN_CLASSES[cls] = frozen
        _ORIGINAL_CLASSES[frozen] = cls
    return frozen


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer with frozen statistics."""
    return isinstance(module, _BatchNorm) and getattr(module, "_gspdml_frozen_bn", False)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Freeze the running statistics of every BatchNorm layer in ``model`` (in place); returns it."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not is_frozen_batchnorm(module):
            module.__class__ = _frozen_class(type(module))
            module.train(False)
    return model


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm` (layers follow ``model.train()`` again)."""
    for module in model.modules():
        if is_frozen_batchnorm(module):
            module.__class__ = _ORIGINAL_CLASSES[type(module)]
    return model


def frozen_batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the frozen BatchNorm layers of ``model``."""
    return [name for name, module in model.named_modules() if is_frozen_batchnorm(module)]


# Predefine the frozen variants of torch's BatchNorm classes so that pickled models load in a
# fresh process (other BatchNorm subclasses get theirs on first freeze).
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
    _frozen_class(_cls)
del _cls
