"""The pooling registry ``POOLINGS`` (name -> pooling class), filled, and :func:`build_pooling`.

Adding a pooling is a one-file change::

    # my_package/my_pooling.py
    from gspdml.pooling import POOLINGS, Pooling

    @POOLINGS.register("mine")
    class MyPooling(Pooling):
        def pool(self, feats, mask):   # feats (B, n, C), mask (B, n) bool or None
            ...
            return pooled, weights, None

Importing the module registers the name. Importing this module imports the built-in pooling
modules, which register themselves. The table itself is defined in :mod:`gspdml.pooling.base`,
which the pooling modules import, so that registering never imports this module back. Any
``nn.Module`` class whose constructor takes the feature dimension first and whose forward
follows the pooling contract (``forward(x, mask=None, return_details=False)``) can be registered.
"""
from __future__ import annotations

from typing import Any

from torch import nn

# the built-in poolings: importing a module registers its names
from gspdml.pooling import attention, delf, gap, gap_gmp, gem, gmp, gsp, gsp_combinations, lse  # noqa: F401
from gspdml.pooling import crow  # noqa: F401
from gspdml.pooling import gem_channel  # noqa: F401
from gspdml.pooling import gmaxp  # noqa: F401
from gspdml.pooling import gsop  # noqa: F401
from gspdml.pooling import netvlad  # noqa: F401
from gspdml.pooling import weldon  # noqa: F401
from gspdml.pooling import cbam  # noqa: F401
from gspdml.pooling import nap  # noqa: F401
from gspdml.pooling import otp  # noqa: F401
from gspdml.pooling import soap  # noqa: F401
from gspdml.pooling import meta_global  # noqa: F401
from gspdml.pooling.base import POOLINGS

__all__ = ["POOLINGS", "build_pooling"]


def build_pooling(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the pooling registered as ``name`` for features of dimension ``dim``.

    Raises :class:`~gspdml.errors.ConfigError` for an unknown name (listing the choices) or for
    keyword arguments the pooling does not accept (naming the pooling and its accepted arguments).
    """
    return POOLINGS.build(name, dim, **kwargs)
