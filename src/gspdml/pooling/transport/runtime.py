"""How the transport code runs: the compute dtype, the autocast guard and the CPU fast paths."""
from __future__ import annotations

import torch

__all__ = ["CPU_FAST_PATHS", "solver_dtype", "no_autocast"]

#: CPU-only shortcuts (numpy views in the Newton loop of :mod:`.exact`, cheap exact-zero
#: detection in :mod:`.cost`), read at call time. Tests switch it off to run the device-generic
#: code path (the one CUDA takes) on CPU.
CPU_FAST_PATHS = True


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GSP computes in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class no_autocast:
    """Disable autocast for the block (the solvers run in at least float32)."""

    def __init__(self, device_type: str):
        self.device_type = device_type if device_type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        self._ctx = None

    def __enter__(self):
        self._ctx = torch.autocast(device_type=self.device_type, enabled=False)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
