"""How much the engine batches and caches by default, by the device the model runs on.

A CPU is bound by memory bandwidth and a few cores: small batches and prefill chunks keep
time to first token low, and the prompt cache shares the machine's RAM. A GPU is idle at batch
8 (on an H200, 32 clients of an 8B 4-bit model waited 6.1 s for their first token at batch 8
and 0.2 s at 64) and reads a long prompt fastest in large chunks (mlx_lm.server uses 2048).
Every value can still be set (``StartConfig``: max_batch_size, prefill_chunk, prompt_cache_mb).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.types import BatchLimits
from ..defaults import DEVICE_LIMITS

MiB = 1 << 20


@dataclass(frozen=True)
class DeviceDefaults:
    max_batch: int
    prefill_chunk: int
    prompt_cache_mb: int
    cache_share: float  # at most this share of the device's memory, when it is known


DEFAULTS = {kind: DeviceDefaults(*values) for kind, values in DEVICE_LIMITS.items()}


def defaults_for(device: str) -> DeviceDefaults:
    """Defaults for a device kind: "cpu", "cuda" or "metal" (any other GPU counts as cuda)."""
    return DEFAULTS.get(device, DEFAULTS["cpu" if device == "cpu" else "cuda"])


def resolve_limits(
    device: str,
    *,
    max_batch: int | None = None,
    prefill_chunk: int | None = None,
    prompt_cache_mb: int | None = None,
    device_memory: int | None = None,
) -> BatchLimits:
    """What the engine uses: each value given, else the device's default."""
    d = defaults_for(device)
    if prompt_cache_mb is None:
        prompt_cache_mb = d.prompt_cache_mb
        if device_memory:
            prompt_cache_mb = min(prompt_cache_mb, int(device_memory * d.cache_share) // MiB)
    return BatchLimits(
        max_batch=max_batch or d.max_batch,
        prefill_chunk=prefill_chunk or d.prefill_chunk,
        prompt_cache_bytes=prompt_cache_mb * MiB,
    )


def describe(device: str, limits: BatchLimits) -> str:
    return (
        f"{device}: batch {limits.max_batch}, prefill chunk {limits.prefill_chunk}, "
        f"prompt cache {limits.prompt_cache_bytes // MiB} MiB"
    )
