"""Pooling weights of a model over images: the (N, h, w) weight maps and, for GSP models, the
GSP layer's input features (to find each location's dominant prototype, see
:func:`gspdml.viz.weights.nearest_prototypes`)."""
from __future__ import annotations

import numpy as np
import torch

from gspdml.errors import InputError

__all__ = ["check_image_model", "find_gsp", "pooling_weight_maps"]


def check_image_model(model: torch.nn.Module, what: str) -> None:
    """InputError unless ``model``'s backbone takes images (token sets have no spatial weight map)."""
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "input_kind", "image") != "image":
        raise InputError(
            f"{what} needs an image model; this checkpoint's backbone takes "
            f"{getattr(backbone, 'input_kind', '?')} (token sets have no spatial weight map)"
        )


def find_gsp(model: torch.nn.Module):
    """The model's GSP layer (also inside combined poolings such as gmp+gsp)."""
    from gspdml.pooling import GSP

    for module in model.modules():
        if isinstance(module, GSP):
            return module
    pooling = type(getattr(model, "pooling", model)).__name__
    raise InputError(f"--by-prototype needs a model with GSP pooling (prototypes); the model's pooling is {pooling}")


def pooling_weight_maps(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                        device: str | torch.device | None = None, gsp=None):
    """Pooling weights of ``model`` over ``images`` (N, C, H, W).

    Returns ``(weights (N, h, w) float array, features)``; ``features`` is the input of the GSP
    layer ``gsp`` (N, C', h, w) when given, else None.
    """
    from gspdml.analysis.zeroshot import collect_model_outputs

    captured: list[torch.Tensor] = []
    hook = None
    if gsp is not None:
        hook = gsp.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach().cpu()))
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    try:
        outputs = collect_model_outputs(model, dataset, batch_size=batch_size, device=device, keep=("weights",),
                                        progress=False)
    finally:
        if hook is not None:
            hook.remove()
    weights = outputs["weights"]
    if weights.ndim != 3:
        raise InputError("the model's pooling gives no (B, h, w) weight map in its details")
    return weights.astype(np.float32), (torch.cat(captured) if gsp is not None else None)
