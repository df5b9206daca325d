"""Reading local weight files and loading them with clear key checks (shared by the backbones)."""
from __future__ import annotations

import logging
import os
from typing import Iterable, Union

import torch
from torch import nn

from gspdml.errors import CheckpointError, ConfigError

log = logging.getLogger("gspdml.models")


def require_file(path: Union[str, os.PathLike], what: str) -> str:
    """``path`` as a string if it is an existing file, else a :class:`ConfigError` saying that
    gspdml never downloads weights."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{what}: weights file {path!r} does not exist (gspdml never downloads weights; "
            "place the file locally and pass its path as 'pretrained')"
        )
    return path


def read_state_dict(path: Union[str, os.PathLike], what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file.

    Accepts a plain state dict or one nested under ``state_dict``/``model``; strips a ``module.``
    prefix (DataParallel). Raises :class:`ConfigError` if the file is missing and
    :class:`CheckpointError` if it cannot be read.
    """
    path = require_file(path, what)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{what}: cannot read weights file {path!r}: {type(exc).__name__}: {exc}") from exc
    for nested in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and nested in state and isinstance(state[nested], dict):
            state = state[nested]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {path!r} does not hold a state dict (name -> tensor)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_checked(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    path: Union[str, os.PathLike],
    ignore_prefixes: Iterable[str] = (),
    optional_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model`` strictly, ignoring keys under ``ignore_prefixes`` in the file.

    Keys under ``optional_prefixes`` (e.g. a classifier head) need not be in the file; where the
    file has them with the model's shapes they are loaded, otherwise skipped.
    ``num_batches_tracked`` buffers may be absent. Raises :class:`CheckpointError` listing missing
    and unexpected keys and shape mismatches.
    """
    ignore, optional = tuple(ignore_prefixes), tuple(optional_prefixes)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.startswith(ignore) and not k.endswith("num_batches_tracked")}
    if optional:
        head = {k: v for k, v in state.items() if k.startswith(optional)}
        fits = all(k in own and tuple(v.shape) == tuple(own[k].shape) for k, v in head.items()) and set(head) == {
            k for k in own if k.startswith(optional)
        }
        state = {k: v for k, v in state.items() if not k.startswith(optional)}
        own = {k: v for k, v in own.items() if not k.startswith(optional)}
        if fits:
            state.update(head)
            own.update({k: model.state_dict()[k] for k in head})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:8])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:8])})")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:8])}")
        raise CheckpointError(f"{what}: weights {os.fspath(path)!r} do not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    log.info("%s: loaded %d tensors from %s", what, len(state), os.fspath(path))


def load_weights_file(
    model: nn.Module, path: Union[str, os.PathLike], what: str, ignore_prefixes: Iterable[str] = ()
) -> None:
    """Read the local state dict at ``path`` and load it into ``model`` with :func:`load_checked`."""
    load_checked(model, read_state_dict(path, what), what, path, ignore_prefixes=ignore_prefixes)
