"""How the transport code runs: the compute dtype, the autocast guard, and whether it is traced."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["solver_dtype", "no_autocast", "is_tracing", "apply_function"]


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GSP computes in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_tracing() -> bool:
    """Whether the code runs under ``torch.compile``, ``torch.export`` (both report
    ``torch.compiler.is_compiling()``) or ``torch.jit.trace``: then data-dependent checks (which
    need the values on the host) are skipped; they run in eager mode only."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())


def no_autocast(device_type: str) -> torch.autocast:
    """A context that disables autocast (the solvers run in at least float32); a plain
    ``torch.autocast``, so that ``torch.compile`` traces through it."""
    return torch.autocast(device_type=device_type if device_type in ("cuda", "cpu", "xpu", "mps") else "cpu",
                          enabled=False)


class _ForwardOnly:
    """Stands in for the autograd context when a Function's forward runs as plain torch ops."""

    needs_input_grad = (False,) * 16

    def save_for_backward(self, *tensors) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def apply_function(function: type, *args):
    """``function.apply(*args)`` when a gradient is needed, else its forward as plain torch ops
    (the same code, so the same values; ``torch.jit.trace`` can then save the graph, and
    inference keeps nothing for a backward pass)."""
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return function.forward(_ForwardOnly(), *args)
