"""MLX on the CPU, made fast: the backend's one door to it (see docs/cpu.md).

Two calls, in the order a load makes them:

    enable_fast_blas()  -> str | None    before mlx is first used (``device.select_device``):
                                         OpenBLAS under MLX's CPU matmuls (``blas``, ``elf``)
    apply(model)        -> CpuTuning     after the model is loaded on the CPU device: weights
                                         in their fast form (``weights``), the allocator
                                         (``allocator``), the fast exp kernels (``kernels``),
                                         and a governor of BLAS threads (``governor``)

The backend then calls ``CpuTuning.tick()`` between steps and while idle. Nothing outside this
package imports its modules (tests and benchmarks aside, which measure the pieces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .blas import enable_fast_blas
from .governor import BlasThreadGovernor

__all__ = ["CpuTuning", "apply", "enable_fast_blas"]


@dataclass
class CpuTuning:
    """What ``apply`` did to a model, and the one thing it keeps doing."""

    form: str  # the weights' form, as logged ("dequantized float32 (...)")
    allocator: bool  # glibc's thresholds raised
    kernels: bool  # the fast exp kernels replaced MLX's SiLU and attention
    governor: BlasThreadGovernor | None  # None: the thread count may not change here

    def tick(self) -> None:
        """Between steps and while idle (engine thread): follow other processes' CPU load."""
        if self.governor is not None:
            self.governor.tick()


def apply(model: Any) -> CpuTuning:
    """Tune an mlx-lm ``model`` loaded on MLX's CPU device (call ``enable_fast_blas`` first)."""
    from . import kernels
    from .allocator import tune_allocator
    from .weights import prepare_model_for_cpu

    form = prepare_model_for_cpu(model)  # logs the form it chose
    allocator = tune_allocator()
    fast = kernels.install(model)
    return CpuTuning(form, allocator, fast, BlasThreadGovernor.create())
