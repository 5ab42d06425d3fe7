"""Which device MLX runs on here, and whether MLX can run at all."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ...errors import BackendUnavailable

log = logging.getLogger(__name__)

_HINT = "Use backend='llama' with a .gguf model instead (pip install 'dvai-bridge[llama]')."


@dataclass(frozen=True)
class MLXDevice:
    kind: str  # "metal", "cuda" or "cpu"
    blas: str | None = None  # the optimized BLAS in use on the CPU device, if any

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"


def cuda_expected() -> bool:
    """An MLX CUDA build is installed and an NVIDIA GPU is visible: MLX will run there, so the
    CPU's BLAS (and its threads) is not loaded. Decided before ``mlx`` is imported."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            distribution(name)
            break
        except PackageNotFoundError:
            continue
    else:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def select_device() -> MLXDevice:
    """Metal on Apple Silicon, CUDA where an mlx[cuda] build is installed, else the CPU.

    On the CPU an optimized BLAS is put under MLX before MLX is first used.
    Raises ``BackendUnavailable`` naming the cause and the alternative.
    """
    if platform.system() == "Darwin" and platform.machine() != "arm64":
        raise BackendUnavailable(
            "MLX needs Apple Silicon; this is an Intel Mac (no MLX device). " + _HINT
        )
    blas = None
    if platform.system() == "Linux" and not cuda_expected():
        from .cpu_tuning import enable_fast_blas  # before mlx binds its BLAS

        blas = enable_fast_blas()
    try:
        import mlx.core as mx
    except ImportError as exc:
        raise BackendUnavailable(
            f"MLX is not installed ({exc}). Install it with pip install 'dvai-bridge[mlx]'. "
            + _HINT
        ) from None
    except OSError as exc:  # a wheel whose native library cannot load here
        raise BackendUnavailable(f"MLX cannot load on this machine: {exc}. " + _HINT) from None

    try:
        if mx.metal.is_available():
            return MLXDevice("metal")
    except Exception:
        pass
    cuda = getattr(mx, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            return MLXDevice("cuda")
    except Exception:
        pass
    if blas is None and platform.system() == "Linux" and cuda_expected():
        log.warning(
            "an MLX CUDA build is installed but MLX found no usable GPU; the CPU runs "
            "with MLX's bundled reference BLAS (slow)"
        )
    if platform.system() == "Darwin":
        raise BackendUnavailable("MLX found no Metal device on this Mac. " + _HINT)
    try:
        mx.set_default_device(mx.cpu)
        mx.eval(mx.zeros((1,)) + 1)
    except Exception as exc:
        raise BackendUnavailable(f"MLX has no usable device here: {exc}. " + _HINT) from None
    log.info("MLX device: cpu (BLAS: %s)", blas or "bundled reference BLAS")
    return MLXDevice("cpu", blas)
